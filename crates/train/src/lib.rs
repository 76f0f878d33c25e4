//! Training engines: fp32 reference and E2-Train (SMD, SLU, PSG) on an accelerator backend.
