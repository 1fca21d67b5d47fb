#include <gtest/gtest.h>

#include "ir/op_registry.h"

TEST(Registry, Loads) { EXPECT_GE(kiln::ir::OpRegistry::global().all().size(), 0u); }
