#include "services/rpc_util.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace retina::services {
namespace {

enum class Secret { kNo, kYes };

// Token files are secrets: like ssh with a private key, refuse one that the
// group or others may read or write (certificates are public: not checked).
absl::StatusOr<std::string> ReadAll(const std::filesystem::path& path, const char* what, Secret secret = Secret::kNo) {
  struct stat st {};
  if (secret == Secret::kYes && ::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return absl::FailedPreconditionError(absl::StrCat(path.string(), ": the ", what, " is accessible by group/others (mode ",
                                                      mode, "); run: chmod 600 ", path.string()));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat(path.string(), ": cannot read the ", what));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Constant-time comparison, so response time does not leak a token prefix.
bool SameToken(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

absl::StatusOr<std::string> ReadTokenFile(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::string text, ReadAll(path, "token file", Secret::kYes));
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty() && line[0] != '#') return std::string(line);
  }
  return absl::FailedPreconditionError(absl::StrCat(path.string(), ": the token file is empty"));
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const std::filesystem::path& client_tokens,
                                                                     const std::filesystem::path& worker_token) {
  auto auth = std::make_unique<Authenticator>();
  if (!client_tokens.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadAll(client_tokens, "client token file", Secret::kYes));
    int line_no = 0;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      ++line_no;
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || line[0] == '#') continue;
      std::vector<std::string> f = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      if (f.size() < 2 || f.size() > 3 || f[0].size() < 16 || (f.size() == 3 && f[2] != "admin") ||
          f[1].size() > 64) {
        return absl::InvalidArgumentError(absl::StrCat(
            client_tokens.string(), ":", line_no,
            ": expected '<token> <user> [admin]' with a token of 16+ characters and a user name of at most 64"));
      }
      if (auto [it, fresh] = auth->client_tokens_.emplace(f[0], Caller{f[1], f.size() == 3}); !fresh) {
        return absl::InvalidArgumentError(absl::StrCat(client_tokens.string(), ":", line_no, ": this token is already listed (for ",
                                                       it->second.user, "); give every user a token of their own"));
      }
    }
    if (auth->client_tokens_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(client_tokens.string(), ": no tokens"));
    }
  }
  if (!worker_token.empty()) {
    ASSIGN_OR_RETURN(auth->worker_token_, ReadTokenFile(worker_token));
    if (auth->worker_token_.size() < 16) {
      return absl::InvalidArgumentError(absl::StrCat(worker_token.string(), ": the worker token needs 16+ characters"));
    }
    // A user holding the workers' token could act as a worker (claim ranks,
    // report any job's end): the two roles never share a token.
    if (auto it = auth->client_tokens_.find(auth->worker_token_); it != auth->client_tokens_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(worker_token.string(), ": the worker token is also the token of user ",
                                                     it->second.user, " in ", client_tokens.string(),
                                                     "; give workers a token of their own"));
    }
  }
  return auth;
}

absl::StatusOr<Caller> Authenticator::Check(const grpc::ServerContextBase& context, Role role) const {
  if (!enabled()) return Caller{"anonymous", true};
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  }
  const std::string token(value);
  const Caller* client = nullptr;
  for (const auto& [t, caller] : client_tokens_) {
    if (SameToken(t, token)) client = &caller;
  }
  const bool is_worker = !worker_token_.empty() && SameToken(worker_token_, token);
  if (role == Role::kClient) {
    if (client != nullptr) return *client;
    if (is_worker) return absl::PermissionDeniedError("the worker token cannot be used for the job API");
  } else {
    if (is_worker) return Caller{"worker", false};
    if (client != nullptr) return absl::PermissionDeniedError("a client token cannot be used for the worker API");
  }
  return absl::UnauthenticatedError("invalid token");
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const std::filesystem::path& cert,
                                                                               const std::filesystem::path& key,
                                                                               const std::filesystem::path& client_ca) {
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions opts(client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                           : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadAll(cert, "TLS certificate"));
  ASSIGN_OR_RETURN(pair.private_key, ReadAll(key, "TLS key"));
  opts.pem_key_cert_pairs.push_back(pair);
  if (!client_ca.empty()) {
    ASSIGN_OR_RETURN(opts.pem_root_certs, ReadAll(client_ca, "client CA"));
  }
  return grpc::SslServerCredentials(opts);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                           const std::filesystem::path& ca) {
  if (address.empty()) return absl::InvalidArgumentError("address: empty (host:port of the coordinator)");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // Reconnect within about a second of a restarted coordinator (the default
  // backoff grows to two minutes), so workers re-register inside its
  // recovery window.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (ca.empty()) return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  grpc::SslCredentialsOptions opts;
  ASSIGN_OR_RETURN(opts.pem_root_certs, ReadAll(ca, "CA certificate"));
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(opts), args);
}

std::unique_ptr<grpc::ClientContext> NewCallContext(const std::string& token, absl::Duration timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token.empty()) ctx->AddMetadata("authorization", absl::StrCat("Bearer ", token));
  if (timeout != absl::InfiniteDuration()) ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return ctx;
}

}  // namespace retina::services
