#include "procs_fixture.hpp"
