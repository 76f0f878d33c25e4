// Included through an include directory, to test `include()` in the build API.
localparam int unsigned ACC_W = 48;
