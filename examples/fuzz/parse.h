#include <stddef.h>
#include <stdint.h>

/* Parses a record "<tag byte><length byte><payload>" and returns the payload's checksum. */
int parse_record(const uint8_t *data, size_t size);
