// vlharness's replacements for Verilator's vl_fatal and vl_stop (enabled by VL_USER_FATAL and
// VL_USER_STOP when the runtime is compiled). The stock versions abort the process, which would kill
// every test running in it; these throw instead, and each model's shim catches the exception around
// eval() and hands the message to Rust as an error.
#include "verilated.h"

#include <stdexcept>
#include <string>

void vl_fatal(const char* filename, int linenum, const char* hier, const char* msg) VL_MT_UNSAFE {
    (void)hier;
    Verilated::threadContextp()->gotError(true);
    Verilated::threadContextp()->gotFinish(true);
    Verilated::runFlushCallbacks();
    std::string where = (filename && filename[0]) ? std::string(filename) + ":" + std::to_string(linenum) + ": " : "";
    throw std::runtime_error(where + (msg ? msg : "fatal error"));
}

void vl_stop(const char* filename, int linenum, const char* hier) VL_MT_UNSAFE {
    // $stop, and a failed immediate assertion (Verilator prints the assertion's message first).
    vl_fatal(filename, linenum, hier, "Verilog $stop or a failed assertion (see the message printed above)");
}
