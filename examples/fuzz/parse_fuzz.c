/* The libFuzzer entry point for parse_record. */
#include "parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    parse_record(data, size);
    return 0;
}
