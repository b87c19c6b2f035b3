/* A small strict JSON parser of clattn's own for the tuning files (json.c): no
 * dependency, bounded in size, depth and values, and it never reads past its input. */
#ifndef CLATTN_TUNING_JSON_H
#define CLATTN_TUNING_JSON_H

#include "core/common.h"

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

/* Nodes in one array; children are linked by index (-1 = none). Strings (values and keys)
 * are decoded into one arena. */
typedef struct clattn__jnode {
    int type;
    int first, next; /* first child, next sibling */
    size_t key;      /* object members: arena offset of the key */
    size_t str;      /* strings: arena offset */
    double num;
    bool is_int;     /* a number without fraction or exponent that fits long long */
    long long ival;
    size_t begin, end; /* the value's bytes in the text */
} clattn__jnode;

typedef struct clattn__jparser {
    const char *s;
    size_t len, pos;
    clattn__jnode *nodes;
    int nnodes;
    char *arena;
    size_t arena_used;
    char err[128];
} clattn__jparser;

/* Parse text; the root node's index, or -1 with p->err set. Free with clattn__jfree. */
int clattn__jparse(clattn__jparser *p, const char *text, size_t len);
void clattn__jfree(clattn__jparser *p);

/* An object member's key, and a string's text. */
static inline const char *clattn__jkey(const clattn__jparser *p, int n) { return p->arena + p->nodes[n].key; }
static inline const char *clattn__jstr(const clattn__jparser *p, int n) { return p->arena + p->nodes[n].str; }

#endif /* CLATTN_TUNING_JSON_H */
