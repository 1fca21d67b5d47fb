#pragma once
// Value is public (kiln/value.h); this alias keeps internal includes short.
#include "kiln/value.h"
