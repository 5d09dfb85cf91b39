/* The example project of stdlib/fuzz.wf: a record parser with a planted bug. */
#include "parse.h"

int parse_record(const uint8_t *data, size_t size) {
    if (size < 2) return -1;
    uint8_t tag = data[0];
    uint8_t length = data[1];
    int sum = 0;
    if (tag == 'R') {
        /* Correct: the length is checked against what is there. */
        if ((size_t)length + 2 > size) return -1;
        for (size_t i = 0; i < length; i++) sum += data[2 + i];
    } else if (tag == 'X' && size > 2 && data[2] == '!') {
        /* The bug: trusts the length byte, reading past the end of the input. */
        for (size_t i = 0; i < length; i++) sum += data[2 + i];
    }
    return sum;
}
