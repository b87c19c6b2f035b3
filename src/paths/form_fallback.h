/* The fallback between the kernel forms of one path (fused, decode): the form the tuning
 * layer plans runs; one that fails to build gives way to the next form of the path
 * (tuning.c) before the dispatcher leaves the path. */
#ifndef CLATTN_PATHS_FORM_FALLBACK_H
#define CLATTN_PATHS_FORM_FALLBACK_H

#include "paths/path.h"
#include "tuning/tuning.h"

/* Plan dp with the form in force and run it; *form gets the form that ran. */
typedef clattn_status (*clattn__form_run_fn)(clattn_context *ctx, const clattn__dev_problem *dp,
                                             cl_event *event, int *form);

/* Run `run` until a form builds: after a build failure the form is remembered as failed
 * for dp's class on ctx and the next one is planned, while there is a next form and
 * `path` still supports the problem; otherwise the failure is returned. */
clattn_status clattn__run_with_form_fallback(clattn_context *ctx, clattn__tpath tpath,
                                             const clattn__path_impl *path,
                                             const clattn__dev_problem *dp, cl_event *event,
                                             clattn__form_run_fn run);

#endif /* CLATTN_PATHS_FORM_FALLBACK_H */
