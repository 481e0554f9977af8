/* C code compiled by the cc crate (see build.rs) and called from Rust through FFI. */
#include <stdint.h>

/* A counter with internal linkage: a C static in the final binary's symbol table. */
static uint32_t calls;

uint32_t fullapp_c_mix(uint32_t a, uint32_t b) {
    calls++;
    uint32_t x = a * 2654435761u ^ (b + 0x9e3779b9u + (a << 6) + (a >> 2));
    return x ^ (x >> 15);
}

uint32_t fullapp_c_calls(void) {
    return calls;
}
