/* MinGW names this header in lower case. */
#include <ws2tcpip.h>
