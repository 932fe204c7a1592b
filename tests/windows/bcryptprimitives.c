/* A stand-in for bcryptprimitives.dll, for wine 8 (Debian bookworm) only: Windows has had
 * this DLL since Windows 8 and Rust's standard library takes its random bytes from its
 * ProcessPrng, but wine 8 lacks it (wine 10 has it). The wine suite puts this into its own
 * wine prefix; zdeploy.exe ships without it. The bytes come from RtlGenRandom, Windows'
 * (and wine's) CSPRNG behind advapi32's SystemFunction036. */
#include <windows.h>
#include <ntsecapi.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
