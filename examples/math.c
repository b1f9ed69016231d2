/* Core WebAssembly module with numeric functions for RainChanel tasks.
 *
 * Built without a C library and without imports, so it runs on any worker.
 * Each exported name is set with export_name; see build.sh for the command.
 */

#define EXPORT(name) __attribute__((export_name(name)))

EXPORT("add")
int add(int a, int b) {
    return a + b;
}

EXPORT("mul64")
long long mul64(long long a, long long b) {
    return a * b;
}

/* Return the n-th Fibonacci number; fib(90) is above 2^53. */
EXPORT("fib")
long long fib(int n) {
    long long previous = 0;
    long long current = 1;
    if (n <= 0) {
        return 0;
    }
    for (int i = 1; i < n; i++) {
        long long next = previous + current;
        previous = current;
        current = next;
    }
    return current;
}

/* Traps with "integer divide by zero" when b is 0. */
EXPORT("div")
int div(int a, int b) {
    return a / b;
}

EXPORT("sqrt_f64")
double sqrt_f64(double x) {
    return __builtin_sqrt(x);
}

EXPORT("mul_f32")
float mul_f32(float a, float b) {
    return a * b;
}

/* Read the 32-bit integer at a linear memory address; a large address traps. */
EXPORT("load_i32")
int load_i32(unsigned int address) {
    return *(volatile int *)address;
}

/* Reach an unreachable instruction. */
EXPORT("fail")
void fail(void) {
    __builtin_trap();
}

/* Recurse n levels deep on the wasm call stack. The result depends on the
 * inner call's value in a non-linear way, so the compiler cannot turn the
 * recursion into a loop, and a large n exhausts the call stack. */
EXPORT("depth")
int depth(int n) {
    if (n <= 0) {
        return 0;
    }
    int inner = depth(n - 1);
    return inner + (inner & 1) + 1;
}
