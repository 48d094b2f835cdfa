/* The node's hop in C: UDP → open → switch (unicast common case) → seal → UDP (see fast.h). */
#include "fast.h"

PyMethodDef at_node_methods[] = {{NULL}};
