#include "cloister/address.h"
