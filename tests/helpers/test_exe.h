/* Running the built `clattn` executable from a test, with its exit status, stdout and
 * stderr captured: shared by the CLI tests. */
#ifndef CLATTN_TEST_EXE_H
#define CLATTN_TEST_EXE_H

#define CLATTN_EXE CLATTN_TEST_BINARY_DIR "/clattn"

typedef struct test_exe_result {
    int status;     /* exit status, or 128 + signal */
    char out[8192]; /* stdout */
    char err[8192]; /* stderr */
} test_exe_result;

/* Run clattn with the NULL-terminated arguments (argv[0] excluded); the captured output
 * passes through two files in scratch_dir, removed afterwards. CLATTN_LOG is unset for
 * the child: its lines would break the CLI's one-line error rule. */
void test_run_clattn(const char *scratch_dir, test_exe_result *r, const char *const *args);

#endif
