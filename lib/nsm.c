#include "cloister/nsm.h"
