#include "services/cli/model_commands.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include <google/protobuf/util/json_util.h>

#include "common/exec_image.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace retina::cli {
namespace {
namespace v1 = retina::v1;

std::string When(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%d %H:%M", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

// The checkpoint's validation IoU and test IoU (LineageStep.scores_json), short.
std::string Scores(const v1::LineageStep& st) {
  if (st.scores_json().empty()) return "-";
  const nlohmann::json j = nlohmann::json::parse(st.scores_json(), nullptr, false);
  if (j.is_discarded()) return "-";
  std::vector<std::string> parts;
  if (j.contains("val_iou")) parts.push_back(absl::StrFormat("val %.4f", j["val_iou"].get<double>()));
  for (const char* key : {"test", "eval"}) {
    if (j.contains(key) && j[key].contains("mean_iou")) {
      parts.push_back(absl::StrFormat("%s %.4f", key, j[key]["mean_iou"].get<double>()));
    }
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, ", ");
}

std::string Source(const v1::ModelVersion& m) {
  if (m.lineage_size() == 0) return "-";
  const v1::LineageStep& s = m.lineage(0);
  return s.job_id().empty() ? s.checkpoint() : absl::StrCat(s.job_id(), ":", s.step());
}

// RegisterModel with the name, description and tags of `f` (register and import).
absl::StatusOr<v1::ModelVersion> SendRegister(const Client& c, const ModelFlags& f, v1::RegisterModelRequest req) {
  req.set_name(f.name);
  req.set_description(f.description);
  for (const std::string& t : f.tags) req.add_tags(t);
  v1::ModelVersion m;
  RETURN_IF_ERROR(Call(c.models->RegisterModel(c.Context(absl::Minutes(5)).get(), req, &m)));
  return m;
}

absl::Status Register(const Client& c, const ModelFlags& f) {
  v1::RegisterModelRequest req;
  const size_t colon = f.source.find(':');
  req.set_job_id(f.source.substr(0, colon));
  if (colon != std::string::npos) {
    int64_t step = 0;
    if (!absl::SimpleAtoi(f.source.substr(colon + 1), &step) || step < 1) {
      return absl::InvalidArgumentError(absl::StrCat("'", f.source, "': give JOB or JOB:STEP (a checkpoint's step, >= 1)"));
    }
    req.set_step(step);
  }
  ASSIGN_OR_RETURN(v1::ModelVersion m, SendRegister(c, f, std::move(req)));
  if (f.json) return PrintJson(m);
  std::printf("registered %s from %s (model:%s in weights fields)\n", m.id().c_str(), Source(m).c_str(), m.id().c_str());
  return absl::OkStatus();
}

absl::Status Import(const Client& c, const ModelFlags& f) {
  v1::RegisterModelRequest req;
  req.set_package(f.source);
  ASSIGN_OR_RETURN(v1::ModelVersion m, SendRegister(c, f, std::move(req)));
  if (f.json) return PrintJson(m);
  std::printf("imported %s as %s (model:%s in weights fields; its test tensors are checked wherever it is used)\n",
              f.source.c_str(), m.id().c_str(), m.id().c_str());
  return absl::OkStatus();
}

absl::Status List(const Client& c, const ModelFlags& f) {
  v1::ListModelVersionsRequest req;
  req.set_name(f.name);
  v1::ListModelVersionsResponse resp;
  RETURN_IF_ERROR(Call(c.models->ListModels(c.Context().get(), req, &resp)));
  if (f.json) return PrintJson(resp);
  std::printf("%-28s %-16s %-10s %-18s %-24s %-16s %s\n", "MODEL", "TAGS", "USER", "SOURCE", "SCORES", "REGISTERED",
              "DESCRIPTION");
  for (const v1::ModelVersion& m : resp.models()) {
    const std::string tags = m.tags().empty() ? "-" : absl::StrJoin(m.tags(), ",");
    std::printf("%-28s %-16s %-10s %-18s %-24s %-16s %s\n", m.id().c_str(), tags.c_str(), m.user().c_str(),
                Source(m).c_str(), m.lineage_size() ? Scores(m.lineage(0)).c_str() : "-",
                When(m.create_unix_ms()).c_str(), m.description().c_str());
  }
  return absl::OkStatus();
}

void PrintStep(int i, const v1::LineageStep& s) {
  const char* pad = "     ";
  std::string head = i == 0 ? "  " : "  <- ";
  if (!s.model_id().empty()) head += "model " + s.model_id() + ": ";
  if (!s.job_id().empty()) {
    head += absl::StrFormat("job %s (%s, step %lld%s)", s.job_id(), s.kind(), static_cast<long long>(s.step()),
                            s.user().empty() ? "" : ", user " + s.user());
  } else {
    head += s.checkpoint();
  }
  std::printf("%s\n", head.c_str());
  if (!s.job_id().empty()) std::printf("%scheckpoint %s\n", pad, s.checkpoint().c_str());
  if (!s.manifest_sha256().empty()) std::printf("%sMANIFEST sha256 %s\n", pad, s.manifest_sha256().c_str());
  for (const v1::DatasetUse& d : s.datasets()) {
    std::printf("%sdata (%s) %s, version %d, digest %s\n", pad, d.role().c_str(), d.name().c_str(), d.version(),
                d.digest().empty() ? "-" : d.digest().substr(0, 16).c_str());
  }
  if (!s.code_version().empty()) std::printf("%scode %s\n", pad, s.code_version().c_str());
  if (!s.scores_json().empty()) std::printf("%sscores %s\n", pad, Scores(s).c_str());
  if (!s.init().empty()) std::printf("%sinit %s\n", pad, s.init().c_str());
  if (!s.note().empty()) std::printf("%snote: %s\n", pad, s.note().c_str());
}

absl::Status Show(const Client& c, const ModelFlags& f) {
  v1::GetModelRequest req;
  req.set_ref(f.ref);
  v1::ModelVersion m;
  RETURN_IF_ERROR(Call(c.models->GetModel(c.Context().get(), req, &m)));
  if (f.json) return PrintJson(m);
  std::printf("model:       %s\ntags:        %s\nuser:        %s\nregistered:  %s UTC (%s)\nfiles:       %s\n",
              m.id().c_str(), m.tags().empty() ? "-" : absl::StrJoin(m.tags(), ", ").c_str(), m.user().c_str(),
              When(m.create_unix_ms()).c_str(), m.origin().c_str(), m.path().c_str());
  if (!m.description().empty()) std::printf("description: %s\n", m.description().c_str());
  std::printf("source:      %s\nscores:      %s\nuse it as:   model:%s\n", Source(m).c_str(),
              m.lineage_size() ? Scores(m.lineage(0)).c_str() : "-", m.id().c_str());
  if (!f.lineage) return absl::OkStatus();
  std::printf("\nlineage (this checkpoint first, then what each run started from):\n");
  for (int i = 0; i < m.lineage_size(); ++i) PrintStep(i, m.lineage(i));
  if (m.lineage_size() > 0 && !m.lineage(0).config_yaml().empty()) {
    std::printf("\nthe job file as run (%s):\n%s", m.lineage(0).job_id().c_str(), m.lineage(0).config_yaml().c_str());
  }
  return absl::OkStatus();
}

absl::Status Tag(const Client& c, const ModelFlags& f) {
  v1::TagModelRequest req;
  req.set_ref(f.ref);
  req.set_tag(f.tag);
  req.set_remove(f.remove);
  v1::ModelVersion m;
  RETURN_IF_ERROR(Call(c.models->TagModel(c.Context().get(), req, &m)));
  if (f.json) return PrintJson(m);
  std::printf("%s: tags %s\n", m.id().c_str(), m.tags().empty() ? "-" : absl::StrJoin(m.tags(), ", ").c_str());
  return absl::OkStatus();
}

absl::Status Delete(const Client& c, const ModelFlags& f) {
  v1::DeleteModelRequest req;
  req.set_ref(f.ref);
  v1::ModelVersion m;
  RETURN_IF_ERROR(Call(c.models->DeleteModel(c.Context().get(), req, &m)));
  if (f.json) return PrintJson(m);
  std::printf("deleted %s\n", m.id().c_str());
  return absl::OkStatus();
}

// `retina models export`: the version's files are read from the store by
// retina-export (the trainer's code: this client links none), with the
// registry's record of the version attached as its lineage.
absl::Status Export(const Client& c, const ModelFlags& f) {
  std::string store = f.store;
  if (store.empty() && std::getenv("RETINA_STORE")) store = std::getenv("RETINA_STORE");
  if (store.empty()) return absl::InvalidArgumentError("--store: the store's path is needed (or RETINA_STORE)");
  v1::GetModelRequest req;
  req.set_ref(f.ref);
  v1::ModelVersion m;
  RETURN_IF_ERROR(Call(c.models->GetModel(c.Context().get(), req, &m)));
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(m, &json).ok()) return absl::InternalError("lineage: not JSON");
  const std::filesystem::path lineage = std::filesystem::temp_directory_path() / UniqueTempName("retina-lineage-");
  RETURN_IF_ERROR(WriteFileAtomic(lineage, json + "\n"));
  std::vector<std::string> args = {"--weights", "model:" + m.id(), "--store", store, "-o", f.out,
                                   "--lineage", lineage.string(), "--name", "RETINA " + m.name() + " v" + std::to_string(m.version()),
                                   "--description", m.description().empty() ? "RETINA model " + m.id() : m.description(),
                                   "--license", f.license};
  for (const std::string& a : f.authors.empty() ? std::vector<std::string>{m.user()} : f.authors) {
    args.insert(args.end(), {"--author", a});
  }
  for (const std::string& t : m.tags()) args.insert(args.end(), {"--tag", t});
  if (!f.sample.empty()) args.insert(args.end(), {"--sample", f.sample});
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string why = ExecBesideSelf("retina-export", args, {"trainer"});
    std::fprintf(stderr, "retina models export: cannot run retina-export (%s); install it beside retina or on PATH\n",
                 why.c_str());
    _exit(127);
  }
  int status = 0;
  if (pid > 0) waitpid(pid, &status, 0);
  std::error_code ec;
  std::filesystem::remove(lineage, ec);
  if (pid < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("retina-export did not write ", f.out, " (see its message above)"));
  }
  return absl::OkStatus();
}

}  // namespace

void AddModelCommands(Cli& cli, const ConnectFlags* flags, ModelCommands* c) {
  CLI::App* group = cli.Group("models", "The model registry: named, versioned checkpoints with their lineage");
  auto run = [flags](ModelFlags* f, absl::Status (*fn)(const Client&, const ModelFlags&)) {
    return Connected(flags, [f, fn](const Client& client) -> absl::StatusOr<int> {
      RETURN_IF_ERROR(fn(client, *f));
      return 0;
    });
  };
  CLI::App* reg = cli.Command("register", "Register a job's checkpoint as a new version of a model",
                              run(&c->register_, Register), group);
  reg->add_option("source", c->register_.source, "JOB (its final checkpoint) or JOB:STEP")->required();
  reg->add_option("--name", c->register_.name, "the model's name (a-z 0-9 . _ -)")->required();
  reg->add_option("--description", c->register_.description, "free text");
  reg->add_option("--tag", c->register_.tags, "a tag for this version (moved from another version); repeatable");
  reg->add_flag("--json", c->register_.json, "as JSON");
  CLI::App* imp = cli.Command("import", "Register a BioImage.IO package (a .zip in the store) as a new version",
                              run(&c->import_, Import), group);
  imp->add_option("package", c->import_.source, "the package: relative to the store, or under it / an allowed root")
      ->required();
  imp->add_option("--name", c->import_.name, "the model's name (a-z 0-9 . _ -)")->required();
  imp->add_option("--description", c->import_.description, "free text");
  imp->add_option("--tag", c->import_.tags, "a tag for this version; repeatable");
  imp->add_flag("--json", c->import_.json, "as JSON");
  CLI::App* list = cli.Command("list", "Every model version (or one name's)", run(&c->list, List), group);
  list->add_option("name", c->list.name, "only this model's versions");
  list->add_flag("--json", c->list.json, "as JSON");
  CLI::App* show = cli.Command("show", "One model version; --lineage: the chain down to the pre-training",
                               run(&c->show, Show), group);
  show->add_option("ref", c->show.ref, "NAME (newest), NAME:vN or NAME@TAG")->required();
  show->add_flag("--lineage", c->show.lineage, "the chain, every dataset and the job file as run");
  show->add_flag("--json", c->show.json, "as JSON (with the lineage)");
  CLI::App* tag = cli.Command("tag", "Put a tag on a version (moving it from another), or --remove it",
                              run(&c->tag, Tag), group);
  tag->add_option("ref", c->tag.ref, "NAME, NAME:vN or NAME@TAG")->required();
  tag->add_option("tag", c->tag.tag, "the tag")->required();
  tag->add_flag("--remove", c->tag.remove, "remove the tag instead");
  tag->add_flag("--json", c->tag.json, "as JSON");
  CLI::App* del = cli.Command("delete", "Delete a version and its files (refused while a model or an unfinished job uses it)",
                              run(&c->del, Delete), group);
  del->add_option("ref", c->del.ref, "NAME:vN (or NAME / NAME@TAG)")->required();
  del->add_flag("--json", c->del.json, "as JSON");
  CLI::App* exp = cli.Command("export", "Write a version as a BioImage.IO model package (format 0.5) with its lineage",
                              run(&c->export_, Export), group);
  exp->add_option("ref", c->export_.ref, "NAME, NAME:vN or NAME@TAG")->required();
  exp->add_option("-o,--out", c->export_.out, "the package (.zip)")->required();
  exp->add_option("--format", c->export_.tag, "bioimageio (the only one)")->check(CLI::IsMember({"bioimageio"}));
  exp->add_option("--store", c->export_.store, "the store's path (else RETINA_STORE): the version's files are read here");
  exp->add_option("--author", c->export_.authors, "an author (repeatable; default: who registered it)");
  exp->add_option("--license", c->export_.license, "SPDX identifier of the weights' licence");
  exp->add_option("--sample", c->export_.sample, "the test input's image (default: synthetic EM)");
}

}  // namespace retina::cli
