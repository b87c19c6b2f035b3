/* The program cache's key: what a kernel source contributes to it. Kernel files carry
 * long comments; an edit to one must not invalidate every user's cached programs, while
 * any change the compiler sees must. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "context.h"

static uint64_t code_hash(const char *src) { return clattn__code_hash(0xcbf29ce484222325ull, src); }

static void test_comment_edits_keep_the_cache_key(void **state)
{
    (void)state;
    const char *base = "/* header */\nkernel void f(global float *x) { x[0] = 1.0f; } // tail\n";
    const char *edited = "/* a longer header,\n * measured on a new machine */\n"
                         "kernel void f(global float *x) { x[0] = 1.0f; } // other tail\n";
    const char *none = " \nkernel void f(global float *x) { x[0] = 1.0f; } \n";
    assert_true(code_hash(base) == code_hash(edited));
    assert_true(code_hash(base) == code_hash(none));
}

static void test_code_edits_change_the_cache_key(void **state)
{
    (void)state;
    const char *base = "kernel void f(global float *x) { x[0] = 1.0f; }";
    assert_true(code_hash(base) != code_hash("kernel void f(global float *x) { x[0] = 2.0f; }"));
    /* a comment separates tokens: removing it must not join "a" and "b" into "ab" */
    assert_true(code_hash("int a/**/b;") != code_hash("int ab;"));
    /* comment markers inside literals are code */
    assert_true(code_hash("char *s = \"/* x */\";") != code_hash("char *s = \"/* y */\";"));
    assert_true(code_hash("char c = '/'; // x") != code_hash("char c = '*'; // x"));
    assert_true(code_hash("char *s = \"a\\\"/* x */\";") != code_hash("char *s = \"a\\\"/* y */\";"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comment_edits_keep_the_cache_key),
        cmocka_unit_test(test_code_edits_change_the_cache_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
