#include "plot/output_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace dseek::plot {

void write_output_file(const std::string& path, const std::string& bytes) {
  const std::filesystem::path target(path);
  const std::filesystem::path dir = target.parent_path().empty() ? "." : target.parent_path();
  std::string tmp = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
  int fd = ::mkstemp(tmp.data());
  DSEEK_CHECK(fd >= 0, "[plot] {}: cannot create a temporary file in '{}' ({})", path, dir.string(),
              std::strerror(errno));
  auto give_up = [&](const char* what) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    fail("[plot] {}: {} failed ({})", path, what, std::strerror(err));
  };
  if (::fchmod(fd, 0644) != 0) give_up("chmod");
  size_t written = 0;
  while (written < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) give_up("write");
    written += size_t(n);
  }
  if (::fsync(fd) != 0) give_up("fsync");
  const int rc = ::close(fd);
  fd = -1;
  if (rc != 0) give_up("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) give_up("rename");
}

}  // namespace dseek::plot
