/* The start every public attention call shares (attention.c). */
#ifndef CLATTN_API_ATTENTION_H
#define CLATTN_API_ATTENTION_H

#include "core/problem.h"

/* The start of every public attention call (ctx not NULL): clear *event and the last
 * error, read the caller's options into *full (an older, smaller struct gets defaults)
 * and validate the problem into *p; a failure is recorded on ctx with its message. */
clattn_status clattn__call_begin(clattn_context *ctx, const clattn_tensor *q,
                                 const clattn_tensor *k, const clattn_tensor *v, clattn_tensor *o,
                                 const clattn_options *opt, cl_event *event, clattn_options *full,
                                 clattn__problem *p);

#endif /* CLATTN_API_ATTENTION_H */
