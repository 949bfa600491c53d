// gRPC plumbing shared by the coordinator, the worker and the CLI: the one
// absl::Status <-> grpc::Status conversion, bearer tokens, TLS credentials.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace retina::services {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// Who may call what. Client tokens map to user names; the worker token is
// separate so a compromised node cannot submit jobs, nor a user pose as a node.
enum class Role { kClient, kWorker };

// Who called: the user a client token belongs to, and whether that user may
// act on every job (docs/service.md "Permissions").
struct Caller {
  std::string user;
  bool admin = false;
};

// Checks "authorization: Bearer <token>" metadata before any work is done.
// Disabled (every caller is "anonymous") when no token file is configured.
class Authenticator {
 public:
  // `client_tokens`: lines "<token> <user> [admin]" (# comments, blank lines
  // ignored; a token listed twice is an error; "admin" lets that user cancel,
  // watch and read every job); `worker_token`: a file holding one
  // token. Either may be empty (not used). Files the group or others can
  // access are refused (FAILED_PRECONDITION: chmod 600), as ssh refuses keys.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const std::filesystem::path& client_tokens,
                                                               const std::filesystem::path& worker_token);
  bool enabled() const { return !client_tokens_.empty() || !worker_token_.empty(); }
  // The caller; UNAUTHENTICATED without a valid token, PERMISSION_DENIED when
  // the token belongs to the other role. Without token files every caller is
  // "anonymous" and an admin (one trusted network, one user).
  absl::StatusOr<Caller> Check(const grpc::ServerContextBase& context, Role role) const;

 private:
  std::map<std::string, Caller> client_tokens_;  // token -> caller
  std::string worker_token_;
};

// Reads a token file (first non-empty line, whitespace trimmed); refuses one
// the group or others can access, like the Authenticator.
absl::StatusOr<std::string> ReadTokenFile(const std::filesystem::path& path);

// Server credentials: TLS when `cert` and `key` are given (and mutual TLS
// when `client_ca` is), else insecure.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const std::filesystem::path& cert,
                                                                               const std::filesystem::path& key,
                                                                               const std::filesystem::path& client_ca);
// A channel to `address`: TLS verified against `ca` when given, else insecure.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address, const std::filesystem::path& ca);

// A client context carrying the bearer token and a deadline.
std::unique_ptr<grpc::ClientContext> NewCallContext(const std::string& token, absl::Duration timeout);

}  // namespace retina::services
