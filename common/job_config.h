// The job YAML: what `retina-train run --config job.yaml` executes and what
// the coordinator stores. Defaults follow ../docs/METHOD.md (the RETINA
// paper and its reference implementation); every default lives in the
// member initialisers below, with its unit in the Spec. docs/config.md is
// generated from these structs (`retina-train config schema`) and a test
// keeps the two identical.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config_schema.h"

namespace retina {

// The closed vocabularies of the job file (their words: EnumWords below).
enum class JobKind { kPretrain, kFinetune, kEvaluate, kInfer, kStudy, kServe, kLoop };
// How a volume is predicted: per xy plane (2d; IoU scored per plane), as a
// stack of xy planes scored as one volume, or xy/xz/yz averaged (orthoplane).
enum class PredictionMode { k2d, kStack, kOrthoplane };
enum class LossKind { kAuto, kBceDice, kCeDice };
enum class SchedulePolicy { kPoly, kConstant };
enum class CropKind { kResized, kRandom };
enum class DeviceKind { kAuto, kCpu, kCuda };
enum class Precision { kAuto, kFp32, kBf16, kFp64 };
// What an infer job writes: OME-Zarr (chunked, written by all ranks), or one
// TIFF/HDF5 file per input (inputs spread over the ranks).
enum class InferFormat { kOmeZarr, kTiff, kHdf5 };
// Per-class probabilities beside the labels, and their type.
enum class ProbabilityOutput { kNone, kUInt8, kFloat16, kFloat32 };
// An uncertainty map beside the labels (trainer/prediction/inference.h,
// NormalisedEntropy): none, or the per-voxel entropy of the class
// probabilities divided by log(classes) (log 2 for one sigmoid channel).
enum class UncertaintyOutput { kNone, kEntropy };
// How an annotation loop picks the blocks a person labels next
// (trainer/prediction/suggest.h).
enum class SelectionStrategy { kUncertainty, kRandom, kUncertaintyNoDiversity };

template <>
struct EnumWords<JobKind> {
  static constexpr std::pair<JobKind, const char*> kWords[] = {
      {JobKind::kPretrain, "pretrain"}, {JobKind::kFinetune, "finetune"}, {JobKind::kEvaluate, "evaluate"},
      {JobKind::kInfer, "infer"}, {JobKind::kStudy, "study"}, {JobKind::kServe, "serve"},
      {JobKind::kLoop, "loop"}};
};
template <>
struct EnumWords<PredictionMode> {
  static constexpr std::pair<PredictionMode, const char*> kWords[] = {
      {PredictionMode::k2d, "2d"}, {PredictionMode::kStack, "stack"}, {PredictionMode::kOrthoplane, "orthoplane"}};
};
template <>
struct EnumWords<LossKind> {
  static constexpr std::pair<LossKind, const char*> kWords[] = {
      {LossKind::kAuto, "auto"}, {LossKind::kBceDice, "bce_dice"}, {LossKind::kCeDice, "ce_dice"}};
};
template <>
struct EnumWords<SchedulePolicy> {
  static constexpr std::pair<SchedulePolicy, const char*> kWords[] = {{SchedulePolicy::kPoly, "poly"},
                                                                       {SchedulePolicy::kConstant, "constant"}};
};
template <>
struct EnumWords<CropKind> {
  static constexpr std::pair<CropKind, const char*> kWords[] = {{CropKind::kResized, "resized"},
                                                                 {CropKind::kRandom, "random"}};
};
template <>
struct EnumWords<InferFormat> {
  static constexpr std::pair<InferFormat, const char*> kWords[] = {
      {InferFormat::kOmeZarr, "ome-zarr"}, {InferFormat::kTiff, "tiff"}, {InferFormat::kHdf5, "hdf5"}};
};
template <>
struct EnumWords<ProbabilityOutput> {
  static constexpr std::pair<ProbabilityOutput, const char*> kWords[] = {{ProbabilityOutput::kNone, "none"},
                                                                         {ProbabilityOutput::kUInt8, "uint8"},
                                                                         {ProbabilityOutput::kFloat16, "float16"},
                                                                         {ProbabilityOutput::kFloat32, "float32"}};
};
template <>
struct EnumWords<UncertaintyOutput> {
  static constexpr std::pair<UncertaintyOutput, const char*> kWords[] = {{UncertaintyOutput::kNone, "none"},
                                                                         {UncertaintyOutput::kEntropy, "entropy"}};
};
template <>
struct EnumWords<SelectionStrategy> {
  static constexpr std::pair<SelectionStrategy, const char*> kWords[] = {
      {SelectionStrategy::kUncertainty, "uncertainty"},
      {SelectionStrategy::kRandom, "random"},
      {SelectionStrategy::kUncertaintyNoDiversity, "uncertainty-nodiversity"}};
};
template <>
struct EnumWords<DeviceKind> {
  static constexpr std::pair<DeviceKind, const char*> kWords[] = {
      {DeviceKind::kAuto, "auto"}, {DeviceKind::kCpu, "cpu"}, {DeviceKind::kCuda, "cuda"}};
};
template <>
struct EnumWords<Precision> {
  static constexpr std::pair<Precision, const char*> kWords[] = {
      {Precision::kAuto, "auto"}, {Precision::kFp32, "fp32"}, {Precision::kBf16, "bf16"}, {Precision::kFp64, "fp64"}};
};

inline const char* JobKindName(JobKind k) { return EnumName(k); }
inline const char* PredictionModeName(PredictionMode m) { return EnumName(m); }

struct ModelConfig {
  std::string name = "r50-vit-b16";
  int image_size = 224;
  int classes = 1;
  double dropout = 0.1;
  template <class V>
  void Visit(V& v) {
    v.Field("name", &name, Spec("named model configuration (METHOD.md section 1)")
                               .OneOf({"r50-vit-b16", "r50-vit-b16-192", "tiny"}));
    v.Field("image_size", &image_size,
            Spec("input side length; a multiple of 16").Unit("px").Min(16).Max(4096));
    v.Field("classes", &classes,
            Spec("segmentation classes incl. background (1 = binary, sigmoid)").Min(1).Max(1024));
    v.Field("dropout", &dropout,
            Spec("transformer dropout (embeddings and MLP; attention dropout is 0); 0 makes a step deterministic").Min(0).Max(0.9));
  }
};

struct DataConfig {
  std::string dataset;
  std::string val_dataset;
  std::string test_dataset;
  std::optional<double> mean;
  std::optional<double> std;
  int loader_threads = 4;
  int prefetch_batches = 4;
  template <class V>
  void Visit(V& v) {
    v.Field("dataset", &dataset,
            Spec("training dataset: a name under <store>/datasets or a directory path (service jobs: under the store or an --allowed-root); required except for kind infer"));
    v.Field("val_dataset", &val_dataset, Spec("validation dataset (fine-tuning); empty = none"));
    v.Field("test_dataset", &test_dataset,
            Spec("held-out test split (an imported <name>-test) scored at finetune.eval_at with the evaluate section's mode/overlap/classes"));
    v.Field("mean", &mean,
            Spec("normalisation mean of v/255; unset = the dataset manifest's value").Min(0).Max(1));
    v.Field("std", &std, Spec("normalisation std of v/255; unset = the manifest's value").Above(0));
    v.Field("loader_threads", &loader_threads, Spec("threads reading and batching shards").Min(1).Max(256));
    v.Field("prefetch_batches", &prefetch_batches, Spec("batches buffered ahead of the step").Min(1).Max(1024));
  }
};

struct OptimizerConfig {
  std::string name = "sgd";
  double lr = 0.003;
  double momentum = 0.9;
  double weight_decay = 1e-4;
  template <class V>
  void Visit(V& v) {
    v.Field("name", &name, Spec("optimizer").OneOf({"sgd"}));
    v.Field("lr", &lr, Spec("base learning rate").Above(0).Max(10));
    v.Field("momentum", &momentum, Spec("SGD momentum").Min(0).Max(1));
    v.Field("weight_decay", &weight_decay, Spec("L2 weight decay on all parameters").Min(0).Max(1));
  }
};

struct ScheduleConfig {
  SchedulePolicy policy = SchedulePolicy::kPoly;
  double power = 0.9;
  std::int64_t horizon_iters = 0;
  template <class V>
  void Visit(V& v) {
    v.Field("policy", &policy,
            Spec("lr schedule: poly = lr (1 - k/K)^power per iteration"));
    v.Field("power", &power, Spec("poly exponent").Above(0).Max(10));
    v.Field("horizon_iters", &horizon_iters,
            Spec("K of the poly schedule; 0 = the run's total iterations").Unit("iterations").Min(0));
  }
};

// Pre-training augmentation (METHOD.md section 2, albumentations semantics).
struct PretrainAugmentConfig {
  double hflip_p = 0.5;
  double vflip_p = 0.5;
  double rotate_p = 0.5;
  double rotate_limit = 90;
  std::vector<double> crop_scale{0.08, 1.0};
  std::vector<double> crop_ratio{0.5, 1.5};
  double brightness_contrast_p = 0.5;
  double brightness_limit = 0.3;
  double contrast_limit = 0.3;
  double noise_p = 0.5;
  std::vector<double> noise_var{400, 1200};
  double blur_p = 0.5;
  double dropout_p = 0.5;
  std::vector<double> dropout_holes{1, 32};
  int dropout_size = 16;
  template <class V>
  void Visit(V& v) {
    v.Field("hflip_p", &hflip_p, Spec("horizontal flip probability").Min(0).Max(1));
    v.Field("vflip_p", &vflip_p, Spec("vertical flip probability").Min(0).Max(1));
    v.Field("rotate_p", &rotate_p, Spec("rotation probability").Min(0).Max(1));
    v.Field("rotate_limit", &rotate_limit, Spec("rotation angle ~ U(-limit, limit)").Unit("deg").Min(0).Max(180));
    v.Field("crop_scale", &crop_scale, Spec("random resized crop: area fraction range [lo, hi]").Min(0).Max(1));
    v.Field("crop_ratio", &crop_ratio, Spec("random resized crop: aspect ratio range [lo, hi] (log-uniform)").Above(0));
    v.Field("brightness_contrast_p", &brightness_contrast_p, Spec("brightness/contrast probability").Min(0).Max(1));
    v.Field("brightness_limit", &brightness_limit, Spec("beta = U(-l, l) x 255").Min(0).Max(1));
    v.Field("contrast_limit", &contrast_limit, Spec("alpha = 1 + U(-l, l)").Min(0).Max(1));
    v.Field("noise_p", &noise_p, Spec("Gaussian noise probability").Min(0).Max(1));
    v.Field("noise_var", &noise_var, Spec("noise variance range [lo, hi]").Unit("grey levels^2").Min(0));
    v.Field("blur_p", &blur_p, Spec("Gaussian blur probability (kernel 3/5/7)").Min(0).Max(1));
    v.Field("dropout_p", &dropout_p, Spec("coarse dropout probability").Min(0).Max(1));
    v.Field("dropout_holes", &dropout_holes, Spec("number of holes range [lo, hi]").Min(0));
    v.Field("dropout_size", &dropout_size, Spec("hole side length").Unit("px").Min(1).Max(4096));
  }
};

struct PretrainConfig {
  std::int64_t epochs = 200;
  int global_batch = 256;
  int checkpoint_every_epochs = 20;
  PretrainAugmentConfig augment;
  template <class V>
  void Visit(V& v) {
    v.Field("epochs", &epochs, Spec("passes over the dataset").Unit("epochs").Min(1));
    v.Field("global_batch", &global_batch,
            Spec("images per step over all ranks; split evenly, must divide by world size. An elastic job "
                 "(submitted with min_world_size, docs/service.md) keeps it at every size: each rank takes "
                 "global_batch / world_size images per micro-batch and, on fewer ranks, accumulates "
                 "world_size / ranks micro-batches per step").Min(1));
    v.Field("checkpoint_every_epochs", &checkpoint_every_epochs,
            Spec("checkpoint interval (and one at the end)").Unit("epochs").Min(1));
    v.Section("augment", &augment, "pre-training augmentation (METHOD.md section 2)");
  }
};

struct FinetuneConfig {
  std::int64_t iters = 10000;
  int global_batch = 16;
  std::string init = "random";
  bool freeze_encoder = true;
  bool init_whole = false;
  std::string register_as;  // YAML `register`: the model name a successful service run registers as
  LossKind loss = LossKind::kAuto;
  std::vector<double> class_weights;
  std::int64_t eval_every_iters = 500;
  std::int64_t save_every_iters = 500;
  // The augmentation recipe (METHOD.md section 3), every parameter a key;
  // defaults are the paper's.
  int pad_to = 0;
  CropKind crop = CropKind::kResized;
  double crop_p = 1.0;
  std::vector<double> crop_scale{0.08, 1.0};
  std::vector<double> crop_ratio{0.5, 1.5};
  double foreground_crop_p = 0.0;
  double rotate_p = 0.5;
  double rotate_limit = 180;
  double rotate90_p = 0.0;
  double hflip_p = 0.5;
  double vflip_p = 0.5;
  double brightness_contrast_p = 0.5;
  double brightness_limit = 0.2;
  double contrast_limit = 0.2;
  double noise_p = 0.0;
  std::vector<double> noise_var{400, 1200};
  double blur_p = 0.0;
  int blur_limit = 7;
  bool noise_blur = false;
  double val_overlap = 0.2;
  std::vector<double> eval_at;  // whole numbers (checked)
  template <class V>
  void Visit(V& v) {
    v.Field("iters", &iters, Spec("exact number of iterations").Unit("iterations").Min(1));
    v.Field("global_batch", &global_batch,
            Spec("images per step over all ranks; must divide by world size. An elastic job keeps it at every "
                 "size by gradient accumulation (as pretrain.global_batch)").Min(1));
    v.Field("init", &init,
            Spec("'random', a pre-training checkpoint (ours or a PyTorch .pt) or an ImageNet .npz (service jobs: under the store or an --allowed-root)"));
    v.Field("freeze_encoder", &freeze_encoder,
            Spec("freeze transformer.encoder.* after transfer (ignored for random init)"));
    v.Field("init_whole", &init_whole,
            Spec("load every tensor of finetune.init, decoder and head too (continue a fine-tune of the same model, "
                 "as the annotation loop's rounds do); false = the encoder only (METHOD.md section 3)"));
    v.Field("register", &register_as,
            Spec("service jobs: when the job succeeds, register its final checkpoint as a new version of this "
                 "model (docs/models.md); empty = not registered"));
    v.Field("loss", &loss,
            Spec("auto = bce_dice for 1 class, ce_dice otherwise"));
    v.Field("class_weights", &class_weights,
            Spec("cross-entropy weights, one per class; empty = uniform").Min(0));
    v.Field("eval_every_iters", &eval_every_iters, Spec("validation interval; 0 = never").Unit("iterations").Min(0));
    v.Field("save_every_iters", &save_every_iters, Spec("checkpoint interval").Unit("iterations").Min(1));
    v.Field("pad_to", &pad_to,
            Spec("pad images smaller than this (reflect-101, centred) before cropping; 0 = model.image_size").Unit("px").Min(0).Max(65536));
    v.Field("crop", &crop,
            Spec("resized = random resized crop (with crop_p, else a plain crop); random = plain crops of model.image_size"));
    v.Field("crop_p", &crop_p, Spec("probability of the resized crop (crop: resized)").Min(0).Max(1));
    v.Field("crop_scale", &crop_scale, Spec("resized crop: area fraction range [lo, hi]").Min(0).Max(1));
    v.Field("crop_ratio", &crop_ratio, Spec("resized crop: aspect ratio range [lo, hi] (log-uniform)").Above(0));
    v.Field("foreground_crop_p", &foreground_crop_p,
            Spec("crop around a random foreground pixel (0.8 for UroCell, CREMI, Kasthuri++)").Min(0).Max(1));
    v.Field("rotate_p", &rotate_p, Spec("rotation probability").Min(0).Max(1));
    v.Field("rotate_limit", &rotate_limit, Spec("rotation angle ~ U(-limit, limit)").Unit("deg").Min(0).Max(180));
    v.Field("rotate90_p", &rotate90_p, Spec("rotation by k x 90 degrees, k ~ U{0..3} (albumentations RandomRotate90)").Min(0).Max(1));
    v.Field("hflip_p", &hflip_p, Spec("horizontal flip probability").Min(0).Max(1));
    v.Field("vflip_p", &vflip_p, Spec("vertical flip probability").Min(0).Max(1));
    v.Field("brightness_contrast_p", &brightness_contrast_p, Spec("brightness/contrast probability (image only)").Min(0).Max(1));
    v.Field("brightness_limit", &brightness_limit, Spec("beta = U(-l, l) x 255 (albumentations default)").Min(0).Max(1));
    v.Field("contrast_limit", &contrast_limit, Spec("alpha = 1 + U(-l, l) (albumentations default)").Min(0).Max(1));
    v.Field("noise_p", &noise_p, Spec("Gaussian noise probability (image only)").Min(0).Max(1));
    v.Field("noise_var", &noise_var, Spec("noise variance range [lo, hi]").Unit("grey levels^2").Min(0));
    v.Field("blur_p", &blur_p, Spec("Gaussian blur probability (image only)").Min(0).Max(1));
    v.Field("blur_limit", &blur_limit,
            Spec("largest blur kernel: k ~ U{3..limit}, an even k taken as k + 1 (7: 3, 5, 7 with 1/5, 2/5, 2/5)").Min(3).Max(31));
    v.Field("noise_blur", &noise_blur, Spec("shorthand: noise_p and blur_p at least 0.5 (Guay)"));
    v.Field("val_overlap", &val_overlap, Spec("sliding-window overlap for validation").Min(0).Max(0.95));
    v.Field("eval_at", &eval_at,
            Spec("iterations whose checkpoints are kept and, after training, scored on data.test_dataset into jobs/<id>/evals/step-N.json (studies)").Unit("iterations").Min(1));
  }
};

struct EvaluateConfig {
  std::string checkpoint;
  PredictionMode mode = PredictionMode::k2d;
  double overlap = 0.5;
  std::vector<double> classes;
  template <class V>
  void Visit(V& v) {
    v.Field("checkpoint", &checkpoint, Spec("model.pt or checkpoint directory to evaluate (service jobs: under the store or an --allowed-root)"));
    v.Field("mode", &mode, Spec("prediction mode: 2d = per xy plane, IoU per plane; stack = xy planes, IoU per volume; orthoplane = xy/xz/yz averaged"));
    v.Field("overlap", &overlap, Spec("sliding-window overlap (0.5 for 2D, 0.7 for 3D)").Min(0).Max(0.95));
    v.Field("classes", &classes, Spec("class indices to score; empty = all but background").Min(0));
  }
};

// Prediction as a job (docs/evaluation.md "Infer jobs"): every rank predicts
// its share of the inputs' chunks; a killed attempt resumes past the chunks
// already written.
struct InferConfig {
  std::vector<std::string> inputs;
  std::string weights;
  PredictionMode mode = PredictionMode::kStack;
  std::optional<double> overlap;
  std::string output;
  InferFormat format = InferFormat::kOmeZarr;
  ProbabilityOutput probabilities = ProbabilityOutput::kNone;
  int classes = 0;
  std::vector<double> chunks{64, 256, 256};
  std::string compressor = "zlib";
  int levels = 0;
  std::string intensity = "uint8";
  int memory_mb = 0;
  int batch = 4;
  UncertaintyOutput uncertainty = UncertaintyOutput::kNone;
  template <class V>
  void Visit(V& v) {
    v.Field("inputs", &inputs,
            Spec("volumes or images to segment: files, folders, globs; TIFF stacks, 'file.h5:/dataset', OME-Zarr, PNG; relative: from the store (service jobs: under the store or an --allowed-root)"));
    v.Field("weights", &weights,
            Spec("trained segmentation weights: model.pt, a checkpoint directory, a job's checkpoints or LATEST, jobs/<id> (relative: from the store)"));
    v.Field("mode", &mode, Spec("2d and stack = xy planes; orthoplane = xy/xz/yz averaged (isotropic volumes)"));
    v.Field("overlap", &overlap,
            Spec("sliding-window overlap; unset = 0.7 for volumes, 0.5 for 2D images (METHOD.md section 4)").Min(0).Max(0.95));
    v.Field("output", &output,
            Spec("output directory; empty = jobs/<id>/predictions in the store (service jobs: inside jobs/<id>/ or "
                 "under an --output-root, never another job's directory or a dataset)"));
    v.Field("format", &format, Spec("ome-zarr = one <input>.ome.zarr per input, chunks written by all ranks; tiff/hdf5 = one file per input"));
    v.Field("probabilities", &probabilities,
            Spec("also write per-class probabilities (uint8 = round(255 p)); ome-zarr: <input>.probabilities.ome.zarr, hdf5: dataset probabilities"));
    v.Field("classes", &classes, Spec("classes the model must have; 0 = what the weights say").Min(0).Max(1024));
    v.Field("chunks", &chunks, Spec("OME-Zarr chunk shape (z, y, x); z is also the unit of work and of resume").Unit("voxels").Min(1).Max(65536));
    v.Field("compressor", &compressor, Spec("OME-Zarr chunk compression").OneOf({"zlib", "blosc", "none"}));
    v.Field("levels", &levels,
            Spec("OME-Zarr pyramid levels incl. full resolution (2x steps, labels by mode); 0 = until y and x fit one chunk").Min(0).Max(16));
    v.Field("intensity", &intensity,
            Spec("uint8 = inputs must be 8-bit; minmax = other types scaled from their [min, max] (read whole)").OneOf({"uint8", "minmax"}));
    v.Field("memory_mb", &memory_mb,
            Spec("per-rank budget for slab buffers (the model comes on top); 0 = 1024 or half the RAM / local ranks").Unit("MiB").Min(0));
    v.Field("batch", &batch, Spec("windows per forward pass").Min(1).Max(4096));
    v.Field("uncertainty", &uncertainty,
            Spec("entropy = also write <input>.uncertainty.ome.zarr: float16 z, y, x, the per-voxel entropy of the "
                 "class probabilities / log(classes) (log 2 for one sigmoid channel), 0 certain .. 1 uniform; "
                 "ome-zarr only"));
  }
};

// The annotation loop (docs/evaluation.md "The annotation loop"): rounds of
// fine-tune -> score on data.test_dataset -> predict the pool with its
// uncertainty -> choose blocks -> label them (the simulated annotator reveals
// pool_labels there) -> add them to the labelled dataset as a new version.
// Every round fine-tunes finetune.iters from the previous round's model
// (round 0 from finetune.init) on all blocks labelled so far.
struct LoopConfig {
  std::string pool;
  std::string pool_labels;
  SelectionStrategy strategy = SelectionStrategy::kUncertainty;
  int rounds = 4;
  int initial_blocks = 16;
  int blocks_per_round = 8;
  int block = 0;
  double min_distance = 0;
  double overlap = 0.5;
  template <class V>
  void Visit(V& v) {
    v.Field("pool", &pool,
            Spec("required: the unlabelled volume blocks are chosen from (any infer input; relative: from the store)"));
    v.Field("pool_labels", &pool_labels,
            Spec("required: the pool's ground truth, same shape: the simulated annotator reveals it in the chosen "
                 "blocks only"));
    v.Field("strategy", &strategy,
            Spec("uncertainty = highest mean entropy with the diversity rule; random = uniform; "
                 "uncertainty-nodiversity = highest mean entropy, blocks may be adjacent"));
    v.Field("rounds", &rounds, Spec("fine-tune rounds (each scored on data.test_dataset)").Min(1).Max(100));
    v.Field("initial_blocks", &initial_blocks,
            Spec("blocks labelled before round 0, chosen at random (the same for every strategy at one seed); their "
                 "tiles must fill finetune.global_batch").Min(1));
    v.Field("blocks_per_round", &blocks_per_round, Spec("blocks labelled after each round but the last").Min(1));
    v.Field("block", &block,
            Spec("block side on an xy plane, at least model.image_size (a block is cut into training tiles of "
                 "model.image_size); 0 = model.image_size").Unit("voxels").Min(0));
    v.Field("min_distance", &min_distance,
            Spec("diversity rule: block centres at least this far apart (z, y, x); 0 = half the block side").Unit("voxels").Min(0));
    v.Field("overlap", &overlap, Spec("sliding-window overlap predicting the pool").Min(0).Max(0.95));
  }
};

struct CheckpointConfig {
  int keep_last = 3;
  bool keep_best = true;
  bool save_initial = false;
  template <class V>
  void Visit(V& v) {
    v.Field("keep_last", &keep_last, Spec("newest checkpoints kept").Min(1).Max(100000));
    v.Field("keep_best", &keep_best, Spec("also keep the best by validation IoU"));
    v.Field("save_initial", &save_initial,
            Spec("also write step 0 (the weights after initialisation and transfer) before the first step"));
  }
};

// A study (docs/evaluation.md "Studies"): the grid datasets x inits x seeds of
// fine-tune jobs built from this file's own sections (model, data, finetune,
// evaluate, ...), each scored at eval_at; the coordinator runs the children
// and aggregates their scores (common/study.h).
struct StudyConfig {
  std::vector<std::string> inits;
  std::vector<std::string> init_names;
  std::vector<double> seeds;    // whole numbers (checked)
  int seed_count = 0;
  std::vector<double> eval_at;  // whole numbers (checked)
  std::vector<std::string> datasets;
  std::vector<std::string> set;
  std::vector<std::string> strategies;
  template <class V>
  void Visit(V& v) {
    v.Field("inits", &inits, Spec("finetune.init of each arm: 'random' or any weights finetune.init accepts"));
    v.Field("init_names", &init_names, Spec("a short name per init for tables and plots; empty = the init itself"));
    v.Field("seeds", &seeds, Spec("the seeds of every cell (give seeds or seed_count)").Min(0));
    v.Field("seed_count", &seed_count, Spec("seeds seed, seed+1, ..., seed+count-1 (give seeds or seed_count)").Min(0).Max(1000));
    v.Field("eval_at", &eval_at, Spec("iterations at which every child is scored on its test split").Unit("iterations").Min(1));
    v.Field("datasets", &datasets,
            Spec("optional grid axis: each child trains on data.dataset=<d> and is scored on <d>-test; empty = data.dataset/test_dataset"));
    v.Field("set", &set, Spec("--set-style overrides (key.path=value) applied to every child"));
    v.Field("strategies", &strategies,
            Spec("a loop study: its arms are these loop.strategy values, each child a kind: loop job (the file's loop "
                 "section), scored after every round at its blocks labelled; inits at most one, eval_at unset")
                .OneOf({"uncertainty", "random", "uncertainty-nodiversity"}));
  }
};

// A model server kept running on a worker's slot (kind: serve;
// docs/serving.md "A model server as a job"): retina-serve with these models,
// each usable by the job's owner (and admins) only.
struct ServeConfig {
  std::vector<std::string> models;
  int port = 0;
  int max_batch = 8;
  double max_delay_ms = 2;
  int max_queue_windows = 1024;
  int max_request_mb = 1024;
  double reload_s = 2;
  template <class V>
  void Visit(V& v) {
    v.Field("models", &models,
            Spec("NAME=WEIGHTS per model: any weights finetune.init accepts; a LATEST, checkpoints/ folder or job "
                 "directory is followed (hot reload), a checkpoint directory pinned"));
    v.Field("port", &port, Spec("gRPC port on the worker's host; 0 = any free one (retina status shows it)").Min(0).Max(65535));
    v.Field("max_batch", &max_batch, Spec("windows per forward pass, shared by concurrent requests").Min(1).Max(4096));
    v.Field("max_delay_ms", &max_delay_ms, Spec("how long a batch waits to fill").Unit("ms").Min(0).Max(10000));
    v.Field("max_queue_windows", &max_queue_windows,
            Spec("windows waiting at most; more is RESOURCE_EXHAUSTED with a retry hint").Min(1));
    v.Field("max_request_mb", &max_request_mb, Spec("buffers one request may need; larger is refused").Unit("MiB").Min(1));
    v.Field("reload_s", &reload_s, Spec("how often followed models look for a new checkpoint").Unit("s").Above(0));
  }
};

struct RuntimeConfig {
  DeviceKind device = DeviceKind::kAuto;
  Precision precision = Precision::kAuto;
  std::string dist_backend = "auto";
  double collective_timeout_s = 600;
  int threads = 0;
  template <class V>
  void Visit(V& v) {
    v.Field("device", &device, Spec("auto = cuda when available"));
    v.Field("precision", &precision,
            Spec("auto = bf16 autocast on CUDA, fp32 on CPU; bf16 = bf16 autocast (fp32 weights and losses) on CUDA "
                 "or on a CPU with AVX512-BF16/AMX units, refused on other CPUs, also used by infer and evaluate "
                 "jobs; fp64 = weights, activations and losses in float64 (for verification: training-step parity)"));
    v.Field("dist_backend", &dist_backend,
            Spec("auto = nccl on CUDA, mpi under mpirun/srun, else gloo").OneOf({"auto", "nccl", "mpi", "gloo"}));
    v.Field("collective_timeout_s", &collective_timeout_s,
            Spec("every collective fails after this").Unit("s").Above(0));
    v.Field("threads", &threads,
            Spec("intra-op threads per rank; 0 = OMP_NUM_THREADS or cores / local ranks").Min(0).Max(4096));
  }
};

struct JobConfig {
  JobKind kind = JobKind::kPretrain;  // required in a job file
  std::int64_t seed = 0;
  ModelConfig model;
  DataConfig data;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  PretrainConfig pretrain;
  FinetuneConfig finetune;
  EvaluateConfig evaluate;
  InferConfig infer;
  StudyConfig study;
  ServeConfig serve;
  LoopConfig loop;
  CheckpointConfig checkpoint;
  RuntimeConfig runtime;

  template <class V>
  void Visit(V& v) {
    v.Field("kind", &kind, Spec("what the job does").Required());
    v.Field("seed", &seed, Spec("seed of sampling, augmentation and initialisation").Min(0));
    v.Section("model", &model, "the network");
    v.Section("data", &data, "datasets and loading");
    v.Section("optimizer", &optimizer, "optimiser (METHOD.md sections 2-3)");
    v.Section("schedule", &schedule, "learning-rate schedule");
    v.Section("pretrain", &pretrain, "reconstruction pre-training (kind: pretrain)");
    v.Section("finetune", &finetune, "supervised fine-tuning (kind: finetune)");
    v.Section("evaluate", &evaluate, "evaluation (kind: evaluate)");
    v.Section("infer", &infer, "prediction (kind: infer)");
    v.Section("study", &study, "a grid of fine-tunes with their statistics (kind: study)");
    v.Section("serve", &serve, "a model server kept running (kind: serve)");
    v.Section("loop", &loop, "the annotation loop (kind: loop)");
    v.Section("checkpoint", &checkpoint, "checkpoint retention");
    v.Section("runtime", &runtime, "device, precision and distribution");
  }
};

// Whether a job of `kind` may have `section` (pretrain, finetune, evaluate,
// infer, study): its own; finetune also evaluate (the scoring at eval_at);
// study finetune and evaluate (its children's).
bool SectionAllowed(JobKind kind, const std::string& section);
// finetune.eval_at, study.eval_at and study.seeds as integers.
std::vector<std::int64_t> WholeNumbers(const std::vector<double>& v);

// Parses and validates a job YAML. `source` names the file in errors.
absl::StatusOr<JobConfig> ParseJobConfig(const std::string& yaml_text, const std::string& source);
// Reads and parses a job YAML file.
absl::StatusOr<JobConfig> LoadJobConfig(const std::filesystem::path& path);
// Applies "--set" overrides ("data.dataset=em", "finetune.class_weights=[1, 2]":
// a dotted key path, '=', a YAML value) to a job YAML text, creating maps on
// the way; returns the merged YAML, which ParseJobConfig then validates as
// usual (so an override of an unknown key is an unknown-key error).
// INVALID_ARGUMENT names the override when it is not key=value, when its
// value is not YAML, or when the path runs through a non-map.
absl::StatusOr<std::string> ApplyConfigOverrides(const std::string& yaml_text, const std::vector<std::string>& overrides);
// The resolved config (every key) as YAML, for jobs/<id>/spec.yaml.
std::string JobConfigToYaml(JobConfig config);
// Markdown reference of every key (docs/config.md).
std::string JobConfigSchemaMarkdown();

}  // namespace retina
