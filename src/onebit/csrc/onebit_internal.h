/* onebit C runtime: what the generated onebit_model.h and the runtime share. The layer table (ob_layer),
 * the channel block width OB_NCO, the bytes per tap OB_TAP_BYTES and the kind enums are generated into
 * onebit_contract.h from onebit/export/c_contract.py, their one definition. */
#ifndef ONEBIT_INTERNAL_H
#define ONEBIT_INTERNAL_H

#include <stdint.h>

#include "onebit_contract.h"

#endif
