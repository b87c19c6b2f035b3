/* The start and the run every public attention call shares (attention.c). */
#ifndef CLATTN_API_ATTENTION_H
#define CLATTN_API_ATTENTION_H

#include "core/staging.h"

/* The start of every public attention call (ctx not NULL): clear *event and the last
 * error, read the caller's options into *full (an older, smaller struct gets defaults)
 * and validate the problem into *p; a failure is recorded on ctx with its message. */
clattn_status clattn__call_begin(clattn_context *ctx, const clattn_tensor *q,
                                 const clattn_tensor *k, const clattn_tensor *v, clattn_tensor *o,
                                 const clattn_options *opt, cl_event *event, clattn_options *full,
                                 clattn__problem *p);
/* The same for a call that names itself in its messages ("what: message"; what NULL:
 * the message alone, as clattn__call_begin). */
clattn_status clattn__call_begin_as(clattn_context *ctx, const char *what, const clattn_tensor *q,
                                    const clattn_tensor *k, const clattn_tensor *v, clattn_tensor *o,
                                    const clattn_options *opt, cl_event *event, clattn_options *full,
                                    clattn__problem *p);

/* The work of a staged call: enqueue it for dp and hand the event of its last command to
 * *ev (left NULL when it enqueued nothing). */
typedef clattn_status (*clattn__call_work)(clattn_context *ctx, const clattn__dev_problem *dp,
                                          void *arg, cl_event *ev);
/* The rest of a call that clattn__call_begin validated: wait for options.wait_events,
 * give an empty output a marker, stage p's tensors, run work(arg) and complete the
 * staging (host outputs back, *event from the work's last command). */
clattn_status clattn__call_run(clattn_context *ctx, const clattn__problem *p,
                               const clattn_options *full, clattn__call_work work, void *arg,
                               cl_event *event);

#endif /* CLATTN_API_ATTENTION_H */
