/* MinGW names this header in lower case. */
#include <windows.h>
