#include "cloister/attestation.h"
