/* MinGW names this header in lower case. */
#include <winsock2.h>
