/* MinGW names this header in lower case. */
#include <mstcpip.h>
