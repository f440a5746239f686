// Writing a finished image: the bytes go to a temporary file beside the target, which is fsynced
// and renamed over it, so a reader (or a crash) never sees half a PNG or SVG.
#pragma once

#include <string>

namespace dseek::plot {

// Throws "[plot] <path>: ..." on any failure and leaves no temporary file behind.
void write_output_file(const std::string& path, const std::string& bytes);

}  // namespace dseek::plot
