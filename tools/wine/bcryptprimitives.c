/*
 * bcryptprimitives.dll for running Rust programs under Wine: one export,
 * ProcessPrng.
 *
 * Why this exists: Rust's standard library on Windows takes its random
 * bytes (HashMap keys and the like) from ProcessPrng in bcryptprimitives.dll,
 * the documented entry point since Windows 10. Debian's Wine (8.0) has no
 * bcryptprimitives.dll, so every Rust program fails to start under it. This
 * DLL exports ProcessPrng and implements it with advapi32's
 * SystemFunction036 (RtlGenRandom), which Wine has.
 *
 * Test tooling only: build-shim.sh builds it with mingw-w64, and
 * test-windows.sh puts it on WINEPATH. Nothing ships it; real Windows has
 * its own. Once Wine provides the DLL itself, delete this folder's shim.
 */
#include <windows.h>

/* RtlGenRandom: declared in ntsecapi.h under another name; exported by
 * advapi32 as SystemFunction036. */
BOOLEAN WINAPI SystemFunction036(PVOID RandomBuffer, ULONG RandomBufferLength);

/* As documented: BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData).
 * The real one never fails; this one fills the buffer in pieces that fit
 * RtlGenRandom's ULONG length. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData)
{
    while (cbData > 0) {
        ULONG chunk = cbData > 0x40000000 ? 0x40000000 : (ULONG)cbData;
        if (!SystemFunction036(pbData, chunk)) {
            return FALSE;
        }
        pbData += chunk;
        cbData -= chunk;
    }
    return TRUE;
}
