/* noexport: a bad module for tests. It has memory, hx_alloc and
 * hx_abi_version but no hx_invoke, so the runtime must refuse to load it
 * with an error naming the missing export. */
#include "hx.h"
