/* tok connect's hops in C: TAP → seal → UDP and UDP → open → TAP (see fast.h). */
#include "fast.h"

PyMethodDef at_tok_methods[] = {{NULL}};
