/* Overlay fragments in C: cutting a sealed super-frame into path-MTU fragments joined in one
 * buffer (for one UDP GSO send) and putting them back together (see overlay/fragment.py). */
#include "fast.h"

PyMethodDef at_frag_methods[] = {{NULL}};
