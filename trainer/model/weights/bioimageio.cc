#include "trainer/model/weights/bioimageio.h"

#include <png.h>
#include <yaml-cpp/yaml.h>
#include <zip.h>

#include <cctype>
#include <cmath>
#include <optional>
#include <cstring>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/store_layout.h"
#include "trainer/model/model_config.h"
#include "trainer/model/weights/npz.h"
#include "trainer/model/weights/state_dict.h"

namespace retina::trainer {
namespace fs = std::filesystem;

namespace {

constexpr char kRdf[] = "rdf.yaml";
constexpr char kWeights[] = "weights.pt";
constexpr char kArchitecture[] = "transunet.py";
constexpr char kTestInput[] = "test_input.npy";
constexpr char kTestOutput[] = "test_output.npy";
constexpr char kCover[] = "cover.png";
constexpr char kReadme[] = "README.md";
constexpr char kLineage[] = "lineage.json";
constexpr char kInputId[] = "raw";
constexpr char kOutputId[] = "probabilities";

// NumPy's .npy v1.0: magic, header length, a dict padded to 64 bytes.
std::string NpyBytes(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous().cpu();
  const char* descr = c.scalar_type() == torch::kUInt8 ? "|u1" : "<f4";
  std::vector<std::string> dims;
  for (int64_t d : c.sizes()) dims.push_back(absl::StrCat(d));
  std::string header = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (",
                                    absl::StrJoin(dims, ", "), dims.size() == 1 ? ",), }" : "), }");
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.push_back(static_cast<char>(len & 0xff));
  out.push_back(static_cast<char>(len >> 8));
  out += header;
  out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return out;
}

// An 8-bit grey PNG of `grey` uint8 [H, W], in memory.
std::string PngBytes(const torch::Tensor& grey) {
  const torch::Tensor g = grey.contiguous().cpu();
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return "";
  }
  png_set_write_fn(
      png, &out, [](png_structp p, png_bytep data, png_size_t n) {
        static_cast<std::string*>(png_get_io_ptr(p))->append(reinterpret_cast<const char*>(data), n);
      },
      nullptr);
  const auto h = static_cast<png_uint_32>(g.size(0)), w = static_cast<png_uint_32>(g.size(1));
  png_set_IHDR(png, info, w, h, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const uint8_t* p = g.data_ptr<uint8_t>();
  for (png_uint_32 y = 0; y < h; ++y) png_write_row(png, const_cast<png_bytep>(p + static_cast<size_t>(y) * w));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// The name the spec allows: letters, digits, _+- () (5-128 characters).
std::string SpecName(const std::string& name) {
  std::string out;
  for (char ch : name) {
    const bool ok = std::isalnum(static_cast<unsigned char>(ch)) || std::strchr("_+- ()", ch) != nullptr;
    out.push_back(ok ? ch : '-');
  }
  while (out.size() < 5) out += "-";
  return out.substr(0, 128);
}

struct PackageZipCloser {
  void operator()(zip_t* z) const { zip_discard(z); }
};

absl::StatusOr<std::string> ReadMember(zip_t* z, const std::string& name, const std::string& where) {
  zip_stat_t st;
  if (zip_stat(z, name.c_str(), 0, &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the package has no ", name));
  }
  std::unique_ptr<zip_file_t, int (*)(zip_file_t*)> f(zip_fopen(z, name.c_str(), 0), zip_fclose);
  if (!f) return absl::DataLossError(absl::StrCat(where, ": cannot open ", name, " in the package"));
  std::string out(st.size, '\0');
  if (zip_fread(f.get(), out.data(), st.size) != static_cast<zip_int64_t>(st.size)) {
    return absl::DataLossError(absl::StrCat(where, ": cannot read ", name, " in the package"));
  }
  return out;
}

// A file the description lists, read and checked against its sha256.
absl::StatusOr<std::string> ListedFile(zip_t* z, const YAML::Node& descr, const std::string& key,
                                       const std::string& where) {
  if (!descr || !descr["source"]) return absl::InvalidArgumentError(absl::StrCat(where, ": rdf.yaml: ", key, ": no source"));
  const std::string source = descr["source"].as<std::string>();
  if (source.find('/') != std::string::npos || source.find("..") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": rdf.yaml: ", key, ": '", source,
                                                   "' is not a file of the package"));
  }
  ASSIGN_OR_RETURN(std::string bytes, ReadMember(z, source, where));
  if (!descr["sha256"]) return absl::InvalidArgumentError(absl::StrCat(where, ": rdf.yaml: ", key, ": no sha256"));
  const std::string want = descr["sha256"].as<std::string>();
  if (Sha256Hex(bytes) != want) {
    return absl::DataLossError(absl::StrCat(where, ": ", source, " does not match its sha256 in rdf.yaml (", key,
                                            "): ", Sha256Hex(bytes), " != ", want));
  }
  return bytes;
}

// The TransUNet's tensors: axes batch, channel, then space y and x.
absl::Status CheckAxes(const YAML::Node& tensor, const std::string& what, const std::string& where) {
  std::vector<std::string> got;
  for (const YAML::Node& a : tensor["axes"]) {
    const std::string type = a["type"] ? a["type"].as<std::string>() : "?";
    got.push_back(type == "space" ? (a["id"] ? a["id"].as<std::string>() : std::string("x")) : type);
  }
  if (got != std::vector<std::string>{"batch", "channel", "y", "x"}) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": rdf.yaml: ", what, ".axes: ", absl::StrJoin(got, ", "),
                                                   "; a TransUNet's are batch, channel, y, x"));
  }
  return absl::OkStatus();
}

}  // namespace

torch::Tensor PackageForward(VisionTransformer& model, const torch::Tensor& raw_u8, double mean, double std) {
  torch::NoGradGuard no_grad;
  model->eval();
  const torch::Tensor x = (raw_u8.to(torch::kFloat32) * static_cast<float>(1.0 / 255.0) - static_cast<float>(mean)) /
                          static_cast<float>(std);
  const torch::Tensor logits = model->forward(x).to(torch::kFloat32);
  return logits.size(1) == 1 ? torch::sigmoid(logits) : torch::softmax(logits, 1);
}

bool IsBioImageIoPackage(const fs::path& path) {
  if (!absl::EndsWith(path.string(), ".zip")) return false;
  int err = 0;
  std::unique_ptr<zip_t, PackageZipCloser> z(zip_open(path.c_str(), ZIP_RDONLY, &err));
  return z && (zip_name_locate(z.get(), kRdf, 0) >= 0 || zip_name_locate(z.get(), "bioimageio.yaml", 0) >= 0);
}

absl::Status WriteBioImageIoPackage(const fs::path& zip_path, const PackageText& text, const PackageModel& model,
                                    const torch::Tensor& test_input, const torch::Tensor& test_output) {
  if (text.authors.empty()) return absl::InvalidArgumentError("authors: a package needs at least one author");
  const int64_t s = test_input.size(-1);
  const int classes = static_cast<int>(test_output.size(1));
  std::map<std::string, std::string> files;  // name -> bytes, each kept until the zip is written
  ASSIGN_OR_RETURN(files[kWeights], ReadFile(model.weights), "the weights");
  files[kArchitecture] = TransUNetPythonSource();
  files[kTestInput] = NpyBytes(test_input.reshape({1, 1, s, s}).to(torch::kUInt8));
  files[kTestOutput] = NpyBytes(test_output.to(torch::kFloat32));
  // The cover: the input beside the first foreground class's probability.
  const torch::Tensor fg = test_output[0][classes == 1 ? 0 : 1];
  files[kCover] = PngBytes(torch::cat({test_input.reshape({s, s}).to(torch::kUInt8),
                                       (fg * 255.0).round().clamp(0, 255).to(torch::kUInt8)},
                                      1));
  if (files[kCover].empty()) return absl::InternalError("cover.png: libpng failed");
  files[kReadme] = text.documentation;
  if (!text.lineage_json.empty()) files[kLineage] = text.lineage_json;
  auto file = [&](const std::string& name) {
    YAML::Node n;
    n["source"] = name;
    n["sha256"] = Sha256Hex(files[name]);
    return n;
  };
  auto axis = [](const char* type, const char* id = nullptr) {
    YAML::Node a;
    a["type"] = type;
    if (id) a["id"] = id;
    return a;
  };

  YAML::Node rdf;
  rdf["format_version"] = kBioImageIoFormatVersion;
  rdf["type"] = "model";
  rdf["name"] = SpecName(text.name);
  rdf["description"] = text.description.substr(0, 1024);
  for (const std::string& a : text.authors) {
    YAML::Node n;
    n["name"] = a;
    rdf["authors"].push_back(n);
  }
  YAML::Node cite;
  cite["text"] = "Xing, Xie & Bader: RETINA: Reconstruction-based pre-trained enhanced TransUNet for electron "
                 "microscopy segmentation on the CEM500K dataset. PLOS Comput Biol 21(5): e1013115 (2025)";
  cite["doi"] = kRetinaDoi;
  rdf["cite"].push_back(cite);
  rdf["license"] = text.license;
  rdf["documentation"] = kReadme;
  rdf["covers"].push_back(kCover);
  for (const std::string& t : {"electron-microscopy", "segmentation", "transunet", "retina", "2d", "pytorch"}) {
    rdf["tags"].push_back(t);
  }
  for (const std::string& t : text.tags) rdf["tags"].push_back(t);
  rdf["timestamp"] = text.timestamp;

  YAML::Node in;
  in["id"] = kInputId;
  in["description"] = "raw EM, one grey channel (uint8 grey levels)";
  in["axes"].push_back(axis("batch"));
  YAML::Node ch = axis("channel");
  ch["channel_names"].push_back("em");
  in["axes"].push_back(ch);
  for (const char* id : {"y", "x"}) {
    YAML::Node a = axis("space", id);
    a["size"] = s;  // the ViT's position embeddings fix it: model.image_size
    in["axes"].push_back(a);
  }
  in["data"]["type"] = "uint8";
  in["test_tensor"] = file(kTestInput);
  YAML::Node pre;
  pre["id"] = "ensure_dtype";
  pre["kwargs"]["dtype"] = "float32";
  in["preprocessing"].push_back(pre);
  YAML::Node scale;
  scale["id"] = "scale_linear";
  scale["kwargs"]["gain"] = 1.0 / 255.0;
  scale["kwargs"]["offset"] = 0.0;
  in["preprocessing"].push_back(scale);
  YAML::Node zmuv;
  zmuv["id"] = "fixed_zero_mean_unit_variance";
  zmuv["kwargs"]["mean"] = model.mean;
  zmuv["kwargs"]["std"] = model.std;
  in["preprocessing"].push_back(zmuv);
  rdf["inputs"].push_back(in);

  YAML::Node out;
  out["id"] = kOutputId;
  out["description"] = classes == 1 ? "foreground probability (sigmoid of the logits)"
                                    : "class probabilities (softmax over channels; class 0 is background)";
  out["axes"].push_back(axis("batch"));
  YAML::Node och = axis("channel");
  if (classes == 1) {
    och["channel_names"].push_back("foreground");
  } else {
    for (int c = 0; c < classes; ++c) och["channel_names"].push_back(c == 0 ? std::string("background") : absl::StrCat("class", c));
  }
  out["axes"].push_back(och);
  for (const char* id : {"y", "x"}) {
    YAML::Node a = axis("space", id);
    a["size"]["tensor_id"] = kInputId;
    a["size"]["axis_id"] = id;
    out["axes"].push_back(a);
  }
  out["data"]["type"] = "float32";
  out["test_tensor"] = file(kTestOutput);
  YAML::Node post;
  post["id"] = classes == 1 ? "sigmoid" : "softmax";
  if (classes > 1) post["kwargs"]["axis"] = "channel";
  out["postprocessing"].push_back(post);
  rdf["outputs"].push_back(out);

  YAML::Node w = file(kWeights);
  w["architecture"] = file(kArchitecture);
  w["architecture"]["callable"] = "VisionTransformer";
  w["architecture"]["kwargs"]["name"] = model.config_name;
  w["architecture"]["kwargs"]["image_size"] = model.image_size;
  w["architecture"]["kwargs"]["classes"] = model.classes;
  w["pytorch_version"] = model.pytorch_version;
  rdf["weights"]["pytorch_state_dict"] = w;
  if (files.count(kLineage)) rdf["attachments"].push_back(file(kLineage));
  YAML::Node tol;
  tol["absolute_tolerance"] = kPackageTestTolerance;
  tol["relative_tolerance"] = 0.0;
  rdf["config"]["bioimageio"]["reproducibility_tolerance"].push_back(tol);
  rdf["config"]["retina"]["model"] = model.config_name;
  rdf["config"]["retina"]["image_size"] = model.image_size;
  rdf["config"]["retina"]["classes"] = model.classes;
  rdf["config"]["retina"]["normalisation"] = "(v / 255 - mean) / std";
  if (files.count(kLineage)) rdf["config"]["retina"]["lineage"] = kLineage;

  YAML::Emitter emitter;
  emitter.SetDoublePrecision(17);
  emitter << rdf;
  files[kRdf] = std::string(emitter.c_str()) + "\n";

  // Written aside, then renamed: a reader never sees half a package.
  const fs::path tmp = zip_path.parent_path() / UniqueTempName("." + zip_path.filename().string() + ".");
  int err = 0;
  zip_t* z = zip_open(tmp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  if (z == nullptr) return absl::InternalError(absl::StrCat(tmp.string(), ": cannot create the zip (libzip error ", err, ")"));
  for (const auto& [name, bytes] : files) {
    zip_source_t* src = zip_source_buffer(z, bytes.data(), bytes.size(), 0);
    if (src == nullptr || zip_file_add(z, name.c_str(), src, ZIP_FL_OVERWRITE | ZIP_FL_ENC_UTF_8) < 0) {
      if (src) zip_source_free(src);
      const std::string why = zip_strerror(z);
      zip_discard(z);
      return absl::InternalError(absl::StrCat(tmp.string(), ": ", name, ": ", why));
    }
  }
  if (zip_close(z) != 0) {
    const std::string why = zip_strerror(z);
    zip_discard(z);
    std::error_code ec;
    fs::remove(tmp, ec);
    return absl::InternalError(absl::StrCat(zip_path.string(), ": ", why));
  }
  return RenameDurable(tmp, zip_path);
}

absl::StatusOr<ImportedPackage> ImportBioImageIoPackage(const fs::path& zip_path, const std::string& field) {
  const std::string where = absl::StrCat(field, " ", zip_path.string());
  int err = 0;
  std::unique_ptr<zip_t, PackageZipCloser> z(zip_open(zip_path.c_str(), ZIP_RDONLY, &err));
  if (!z) return absl::InvalidArgumentError(absl::StrCat(where, ": not a zip archive (libzip error ", err, ")"));
  const std::string rdf_name = zip_name_locate(z.get(), kRdf, 0) >= 0 ? kRdf : "bioimageio.yaml";
  ASSIGN_OR_RETURN(std::string rdf_text, ReadMember(z.get(), rdf_name, where));
  YAML::Node rdf;
  try {
    rdf = YAML::Load(rdf_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", rdf_name, ": ", e.what()));
  }
  try {
    const std::string version = rdf["format_version"] ? rdf["format_version"].as<std::string>() : "";
    if (!absl::StartsWith(version, "0.5.") || !rdf["type"] || rdf["type"].as<std::string>() != "model") {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", rdf_name, ": not a model description of format 0.5 (format_version '",
                                                     version, "')"));
    }
    const YAML::Node w = rdf["weights"]["pytorch_state_dict"];
    if (!w) return absl::InvalidArgumentError(absl::StrCat(where, ": ", rdf_name, ": weights: no pytorch_state_dict entry"));
    const YAML::Node arch = w["architecture"];
    if (!arch || !arch["callable"] || arch["callable"].as<std::string>() != "VisionTransformer" || !arch["kwargs"]) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", rdf_name,
                                                     ": weights.pytorch_state_dict.architecture: not a TransUNet "
                                                     "(callable VisionTransformer with kwargs name, image_size, classes)"));
    }
    const YAML::Node kw = arch["kwargs"];
    const std::string name = kw["name"] ? kw["name"].as<std::string>() : "r50-vit-b16";
    const int image_size = kw["image_size"] ? kw["image_size"].as<int>() : 224;
    const int classes = kw["classes"] ? kw["classes"].as<int>() : 1;
    ASSIGN_OR_RETURN(TransUNetConfig config, NamedModelConfig(name, image_size, classes, ModelHead::kSegmentation),
                     absl::StrCat(where, ": weights.pytorch_state_dict.architecture.kwargs"));
    // One input and one output of the TransUNet's axes; the input's
    // preprocessing must be the RETINA normalisation.
    if (!rdf["inputs"] || rdf["inputs"].size() != 1 || !rdf["outputs"] || rdf["outputs"].size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": rdf.yaml: a TransUNet has one input and one output"));
    }
    const YAML::Node in = rdf["inputs"][0];
    RETURN_IF_ERROR(CheckAxes(in, "inputs[0]", where));
    RETURN_IF_ERROR(CheckAxes(rdf["outputs"][0], "outputs[0]", where));
    double gain = 1, offset = 0;
    std::optional<double> mean, sd;
    for (const YAML::Node& p : in["preprocessing"]) {
      const std::string id = p["id"].as<std::string>();
      if (id == "scale_linear") {
        gain = p["kwargs"]["gain"].as<double>();
        offset = p["kwargs"]["offset"] ? p["kwargs"]["offset"].as<double>() : 0.0;
      } else if (id == "fixed_zero_mean_unit_variance") {
        mean = p["kwargs"]["mean"].as<double>();
        sd = p["kwargs"]["std"].as<double>();
      } else if (id != "ensure_dtype") {
        return absl::InvalidArgumentError(absl::StrCat(where, ": inputs[0].preprocessing: '", id,
                                                       "' is not part of the RETINA normalisation"));
      }
    }
    if (!mean || !sd || *sd <= 0 || std::abs(gain - 1.0 / 255.0) > 1e-12 || offset != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": inputs[0].preprocessing: not the RETINA normalisation (scale_linear gain 1/255, offset 0, then "
                 "fixed_zero_mean_unit_variance with a positive std)"));
    }
    // Every file it lists, checked.
    ASSIGN_OR_RETURN(std::string weights, ListedFile(z.get(), w, "weights.pytorch_state_dict", where));
    RETURN_IF_ERROR(ListedFile(z.get(), arch, "weights.pytorch_state_dict.architecture", where).status());
    ASSIGN_OR_RETURN(std::string input_npy, ListedFile(z.get(), in["test_tensor"], "inputs[0].test_tensor", where));
    ASSIGN_OR_RETURN(std::string output_npy,
                     ListedFile(z.get(), rdf["outputs"][0]["test_tensor"], "outputs[0].test_tensor", where));
    for (const YAML::Node& a : rdf["attachments"]) RETURN_IF_ERROR(ListedFile(z.get(), a, "attachments", where).status());

    // Unpacked into a private directory: the weights and what our loaders read.
    auto dir = std::shared_ptr<const fs::path>(new fs::path(fs::temp_directory_path() / UniqueTempName("retina-bioimageio-")),
                                               [](const fs::path* p) {
                                                 std::error_code ec;
                                                 fs::remove_all(*p, ec);
                                                 delete p;
                                               });
    RETURN_IF_ERROR(CreateDirectories(*dir));
    RETURN_IF_ERROR(WriteFileAtomic(*dir / "model.pt", weights));
    ImportedPackage out;
    out.dir = dir;
    out.checkpoint_dir = *dir;
    out.state.kind = "finetune";
    out.state.model = name;
    out.state.image_size = image_size;
    out.state.classes = classes;
    out.state.mean = *mean;
    out.state.std = *sd;
    out.state.init = absl::StrCat("bioimageio:", zip_path.filename().string());
    RETURN_IF_ERROR(WriteFileAtomic(*dir / StoreLayout::kCheckpointState, EncodeCheckpointState(out.state)));

    // The test tensors, as a consumer's model test runs them.
    VisionTransformer model(config);
    ASSIGN_OR_RETURN(StateDict dict, ReadStateDictFile(*dir / "model.pt"), where);
    RETURN_IF_ERROR(LoadStateDict(*model, std::move(dict)).status(), where);
    ASSIGN_OR_RETURN(torch::Tensor input, ParseNpy(input_npy, absl::StrCat(where, ": ", kTestInput)));
    ASSIGN_OR_RETURN(torch::Tensor expected, ParseNpy(output_npy, absl::StrCat(where, ": ", kTestOutput)));
    if (input.dim() != 4 || input.size(2) != image_size || input.size(3) != image_size) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the test input is not [1, 1, ", image_size, ", ",
                                                     image_size, "]"));
    }
    const torch::Tensor got = PackageForward(model, input, *mean, *sd);
    if (!got.sizes().equals(expected.sizes())) {
      return absl::DataLossError(absl::StrCat(where, ": the test output has another shape than the model's output"));
    }
    out.test_max_abs_diff = (got - expected.to(torch::kFloat32)).abs().max().item<double>();
    if (!(out.test_max_abs_diff <= kPackageTestTolerance)) {
      return absl::DataLossError(absl::StrFormat(
          "%s: the model does not reproduce the package's test output (max |difference| %.3g > %.0e): the weights "
          "are not the ones the test tensors were made with",
          where, out.test_max_abs_diff, kPackageTestTolerance));
    }
    return out;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", rdf_name, ": ", e.what()));
  }
}

}  // namespace retina::trainer
