// oxtrain train [DATA] (--model FILE | -a ARCH) [flags of PyTorch's examples/imagenet/main.py]
//
// The loop of main.py: per epoch, the learning rate (10x decay every 30 epochs), training
// batches with progress lines every --print-freq steps, validation, and a checkpoint. Logs
// match main.py's format so existing parsers (DLPerf's) read them unchanged.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "autodiff/training.h"
#include "base/files.h"
#include "base/text.h"
#include "cli/commands.h"
#include "cli/distributed.h"
#include "cli/flags.h"
#include "cli/progress.h"
#include "cli/train_data.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "graph/zoo.h"
#include "io/loader.h"
#include "io/transforms.h"
#include "runtime/checkpoint.h"
#include "runtime/device.h"
#include "runtime/jpeg_decoder.h"
#include "runtime/session.h"
#include "runtime/step_metrics.h"

namespace fs = std::filesystem;

namespace oxtrain::cli {

namespace {

struct TrainArgs {
  std::string data;
  std::string model, arch = "resnet18";
  int64_t epochs = 90, start_epoch = 0, batch_size = 256;
  double lr = 0.1, momentum = 0.9, weight_decay = 1e-4;
  int64_t print_freq = 10;
  int64_t workers = 4;
  std::string resume;
  bool evaluate = false;
  int64_t seed = 0;
  bool synthetic = false;
  std::string device = "auto";
  std::string decode = "cpu";  // --decode: where JPEGs are decoded
  std::string precision = "tf32";
  bool no_recompute = false;  // --no-recompute
  std::string conv_bn_fusion = "auto";  // --conv-bn-fusion
  bool channels_last = false;
  std::string input_tensors;
  int64_t steps = 0;
  std::string save_model, metrics_json;
  std::string checkpoint_dir = ".";
  int64_t image_size = 224;
  double min_crop_scale = 0.08;
  int64_t num_classes = 0;
  bool num_classes_given = false;  // an explicit --num-classes 0 is refused
  bool batch_size_given = false, image_size_given = false;
  bool seed_given = false;  // as main.py: a seeded run is a reproducible one (cuDNN plans not timed)
  std::string lr_schedule = "step";
  int world_size = 1, rank = 0;
  bool world_size_given = false, rank_given = false;
  std::string dist_url, dist_backend = "nccl";
  bool multiprocessing_distributed = false;
  int nproc_per_node = 0;  // 0: the GPUs visible (CPU: 1)
  double bucket_mb = 25;
  double dist_timeout_minutes = 30;
  bool log_all_ranks = false;
  int64_t threads = 0;
  bool allow_external_data_anywhere = false;
  bool as_exported = false;
};

// Bounds of the flags: generous for real use, small enough that a typo cannot hang the
// program (OpenBLAS with --threads 100000) or make it allocate beyond any machine.
constexpr int64_t kMaxImageSize = 4096, kMinImageSize = 8;
constexpr int64_t kMaxClasses = 1 << 20;
constexpr int64_t kMaxEpochs = 1 << 20;
int64_t max_threads() {
  return std::max<int64_t>(64, 4 * static_cast<int64_t>(std::thread::hardware_concurrency()));
}

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) { g_interrupted = true; }

int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) != 0) continue;
    // "VmHWM:    123456 kB"
    std::string digits;
    for (char c : line.substr(6))
      if (c >= '0' && c <= '9') digits += c;
    return parse_int64(digits).value_or(0) * 1024;
  }
  return 0;
}

double learning_rate(const TrainArgs& a, int64_t epoch) {
  if (a.lr_schedule == "cosine")
    return a.lr * 0.5 * (1 + std::cos(M_PI * static_cast<double>(epoch) / static_cast<double>(a.epochs)));
  return a.lr * std::pow(0.1, static_cast<double>(epoch / 30));  // main.py's adjust_learning_rate
}

std::string number_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", v);
  return buffer;
}

// Every number of the command line, before any work: a value out of range is named with its
// flag and the range (a NaN --lr would otherwise surface as "the loss is NaN" steps later).
void check_numbers(const TrainArgs& a) {
  check_range("--batch-size", a.batch_size, 1, kMaxBatchSize);
  if (!(std::isfinite(a.lr) && a.lr > 0))
    throw Error("--lr must be a finite number greater than 0, got " + number_text(a.lr));
  if (!(a.momentum >= 0 && a.momentum < 1))
    throw Error("--momentum must be in [0, 1), got " + number_text(a.momentum));
  if (!(std::isfinite(a.weight_decay) && a.weight_decay >= 0))
    throw Error("--wd must be a finite number of at least 0, got " + number_text(a.weight_decay));
  check_range("--epochs", a.epochs, 1, kMaxEpochs);
  check_range("--start-epoch", a.start_epoch, 0, a.epochs, " (0 to --epochs)");
  check_range("--print-freq", a.print_freq, 1, INT64_MAX);
  check_range("--steps", a.steps, 0, INT64_MAX, " (0: no limit)");
  check_range("--seed", a.seed, 0, INT64_MAX);
  if (a.num_classes_given) check_range("--num-classes", a.num_classes, 1, kMaxClasses);
  check_range("--image-size", a.image_size, kMinImageSize, kMaxImageSize);
  check_range("--threads", a.threads, 0, max_threads(), " (0: all cores)");
  check_range("--workers", a.workers, 0, max_threads(), " (0: load in the training thread)");
  if (!(a.min_crop_scale > 0 && a.min_crop_scale <= 1))
    throw Error("--min-crop-scale must be in (0, 1], got " + number_text(a.min_crop_scale));
}

// OXTRAIN_DECODE_ON_HOST=1: --decode gpu's path with the GPU decoder's CPU twin in nvJPEG's
// place, on the CPU runtime, so its loader, feeding and fallbacks are tested without a GPU.
bool decode_on_host() {
  const char* v = std::getenv("OXTRAIN_DECODE_ON_HOST");
  return v && std::string(v) == "1";
}

// The twin: each JPEG decoded at full size by libjpeg-turbo and resampled by its taps
// (io::decode_resample), into host memory.
class HostJpegDecoder : public runtime::JpegDecoder {
 public:
  void decode(const runtime::EncodedImage* images, int count, int size, uint8_t* out, void*,
              const std::function<void(int, uint8_t*)>& on_host) override {
    const size_t per_sample = static_cast<size_t>(size) * size * 3;
    for (int k = 0; k < count; ++k) {
      const runtime::EncodedImage& e = images[k];
      uint8_t* sample = out + static_cast<size_t>(k) * per_sample;
      if (!e.data) {
        std::copy(e.pixels, e.pixels + per_sample, sample);
        continue;
      }
      io::SampleTaps taps;
      taps.cols.assign(e.cols, e.cols + size);
      taps.rows.assign(e.rows, e.rows + size);
      try {
        io::decode_resample(e.data, e.size, "an encoded sample", taps, sample);
        ++decoded_;
      } catch (const std::exception&) {  // as nvJPEG refusing it: the caller's fallback
        on_host(k, sample);
        ++refused_;
      }
    }
  }
  std::string describe() const override { return "the GPU decoder's CPU twin (OXTRAIN_DECODE_ON_HOST=1)"; }
  int64_t decoded_on_device() const override { return decoded_; }
  int64_t decoded_on_host() const override { return refused_; }

 private:
  int64_t decoded_ = 0, refused_ = 0;
};

void check_args(const TrainArgs& a) {
  check_numbers(a);
  if (a.lr_schedule != "step" && a.lr_schedule != "cosine")
    throw Error("--lr-schedule is 'step' (10x every 30 epochs, as main.py) or 'cosine'");
  if (!(a.bucket_mb > 0 && a.bucket_mb <= 4096))
    throw Error("--bucket-mb must be in (0, 4096], got " + number_text(a.bucket_mb));
  if (!(a.dist_timeout_minutes > 0 && a.dist_timeout_minutes <= 7 * 24 * 60))
    throw Error("--dist-timeout (minutes) must be in (0, 10080], got " + number_text(a.dist_timeout_minutes));
  check_range("--nproc-per-node", a.nproc_per_node, 0, 1024);
  if (a.device != "cpu" && a.device != "cuda" && a.device != "auto")
    throw Error("--device is cpu, cuda or auto (cuda where a GPU is visible), got '" + escape_name(a.device) + "'");
  if (a.decode != "cpu" && a.decode != "gpu")
    throw Error("--decode is cpu (the loader's threads) or gpu (nvJPEG), got '" + escape_name(a.decode) + "'");
  if (a.decode == "gpu" && a.data.empty())
    throw Error("--decode gpu decodes the JPEGs of DATA (an ImageNet folder); --synthetic and --input-tensors "
                "have nothing to decode");
  if (a.decode == "gpu" && a.device == "cpu" && !decode_on_host())
    throw Error("--decode gpu needs the GPU, and --device cpu trains on the CPU; use --device cuda or --decode cpu");
  parse_precision(a.precision);
  std::error_code ec;
  if (!a.data.empty() && fs::is_regular_file(a.data, ec)) {
    std::string ext = fs::path(a.data).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (ext == ".onnx")
      throw Error("DATA '" + escape_name(a.data) + "' looks like a model; use --model FILE (DATA is "
                  "an ImageNet folder)");
  }
  int sources = (!a.data.empty()) + a.synthetic + (!a.input_tensors.empty());
  if (sources != 1)
    throw Error("give exactly one data source: DATA (an ImageNet folder), --synthetic, or "
                "--input-tensors IMAGES.pb,LABELS.pb");
}

void check_checkpoint_dir(const std::string& dir) {
  std::error_code ec;
  const std::string shown = escape_name(dir);
  fs::create_directories(dir, ec);
  if (ec) throw Error("--checkpoint-dir '" + shown + "' cannot be created: " + ec.message());
  if (!fs::is_directory(dir, ec)) throw Error("--checkpoint-dir '" + shown + "' is not a folder");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw Error("--checkpoint-dir '" + shown + "' is not writable; choose another folder");
}

// Where the run's files go, checked before any work; a "<file>.tmp" that a killed run left
// behind is removed (and said once).
void prepare_outputs(const TrainArgs& a) {
  check_output_file("--metrics-json", a.metrics_json);
  check_output_file("--save-model", a.save_model);
  if (!a.evaluate) check_checkpoint_dir(a.checkpoint_dir);
  std::vector<std::string> outputs{a.metrics_json, a.save_model};
  if (!a.evaluate)
    for (const char* name : {"checkpoint.oxt", "model_best.oxt"})
      outputs.push_back((fs::path(a.checkpoint_dir) / name).string());
  for (const auto& path : outputs)
    if (!path.empty() && remove_stale_tmp(path))
      std::printf("oxtrain: removed '%s', left by an interrupted run\n",
                  escape_name(atomic_tmp_path(path)).c_str());
}

// Copies every persistent value the two sessions share (weights, BN statistics).
void copy_weights(const runtime::Session& from, runtime::Session& to) {
  for (const graph::Value* v : to.graph().initializers()) {
    if (v->role == graph::Role::Constant) continue;
    const graph::Value* src = from.graph().find_value(v->name);
    if (src && src->has_data()) to.assign(v->name, from.fetch(v->name));
  }
}

struct Model {
  graph::Graph forward;  // as imported, for evaluation and --save-model
  std::string source;
};

// `log`: this process prints (rank 0 of a data-parallel job, or --log-all-ranks).
Model load_model(const TrainArgs& a, int64_t classes, bool log) {
  graph::ImportOptions io;
  io.batch_size = a.batch_size;
  io.allow_external_data_anywhere = a.allow_external_data_anywhere;
  io.restore_exporter_rewrites = !a.as_exported;
  Model m;
  if (!a.model.empty()) {
    m.forward = graph::import_onnx(a.model, io);
    m.source = a.model;
    std::string folded = graph::folded_batchnorm_warning(m.forward, a.model);
    if (log && !folded.empty()) std::fprintf(stderr, "oxtrain: warning: %s\n", folded.c_str());
    std::string restored = graph::restored_rewrites_note(m.forward, a.model);
    if (log && !restored.empty()) std::fprintf(stderr, "oxtrain: note: %s\n", restored.c_str());
  } else {
    graph::ZooOptions zo;
    zo.num_classes = classes;
    zo.image_size = a.image_size;
    zo.seed = static_cast<uint64_t>(a.seed);
    m.forward = graph::make_zoo_model(a.arch, zo);
    graph::prepare(m.forward, io);
    m.source = a.arch;
  }
  // Images come as RGB [batch, 3, H, W]; fixed tensors (--input-tensors) may be any
  // [batch, ...] the model takes (video clips [batch, 3, T, H, W], say), checked later.
  const graph::Value* in = m.forward.inputs.at(0);
  if (a.input_tensors.empty() ? in->shape.size() != 4 || in->shape[1] != 3 : in->shape.empty())
    throw Error("model input '" + in->name + "' has shape " + in->shape_string() +
                "; oxtrain train feeds RGB images [batch, 3, H, W]" +
                (a.input_tensors.empty() ? "; other inputs come with --input-tensors" : ""));
  return m;
}

class TrainRun {
 public:
  explicit TrainRun(const TrainArgs& a) : args_(a), a_(args_) {}

  int run();

 private:
  void read_tensors();  // --input-tensors, which set the batch and the image size
  void join();  // the data-parallel job, when there is one
  bool logs() const { return !job_ || job_->is_root() || a_.log_all_ranks; }
  void build_sources();
  void build_sessions();
  void restore(const std::string& path);
  void save_checkpoint(int64_t epoch, int64_t batch_in_epoch, bool is_best);
  bool train_epoch(int64_t epoch, int64_t first_batch);  // false when stopped early
  double validate();
  void save_model();
  void check_finite(double loss);
  void read_step_metrics(AverageMeter& losses, AverageMeter& top1, AverageMeter& top5);
  runtime::Device device() const;
  int64_t peak_device_bytes() const {
    int64_t peak = 0;
    for (const auto* s : {session_.get(), eval_session_.get()})
      if (s) peak += s->device().peak_allocated();
    return peak;
  }
  const graph::Shape& image_shape() const { return image_shape_; }
  // A batch's images into `input`: float [N, 3, H, W], or uint8 pixels [N, H, W, 3].
  void feed_images(runtime::Session& s, const std::string& input, const TrainBatch& b) {
    const graph::Shape& i = image_shape_;
    if (b.encoded) feed_encoded(s, input, b);
    else if (b.pixels) s.feed(input, graph::DType::u8, {i[0], i[2], i[3], i[1]}, b.pixels);
    else s.feed(input, graph::DType::f32, i, b.images);
  }
  // --decode gpu: nvJPEG decodes the batch's JPEGs straight into the input's staging buffer.
  void feed_encoded(runtime::Session& s, const std::string& input, const TrainBatch& b);
  void make_decoder();

  TrainArgs args_;  // -b becomes this process's share under --multiprocessing-distributed
  const TrainArgs& a_;
  std::optional<Job> job_;
  SourceOptions source_options_;
  std::optional<InputTensors> input_tensors_;  // until checked against the model
  std::unique_ptr<BatchSource> train_, val_;
  graph::Shape image_shape_;  // of a batch of images as fed
  Model model_;
  autodiff::TrainingGraph tg_;
  std::unique_ptr<runtime::Session> session_, eval_session_;
  std::unique_ptr<runtime::StepMetrics> step_metrics_;
  std::unique_ptr<runtime::JpegDecoder> decoder_;  // --decode gpu
  std::vector<runtime::EncodedImage> encoded_images_;
  std::vector<uint8_t> black_;  // one padding sample
  std::set<std::string> undecodable_;  // files neither nvJPEG nor the CPU decoded, warned of once
  std::string input_name_, eval_input_, eval_output_;
  int64_t classes_ = 0, global_step_ = 0, start_epoch_ = 0, resume_batch_ = 0;
  double best_acc1_ = 0;
  std::string last_checkpoint_;
  std::vector<double> step_seconds_;  // every training step of this run, for the summary
  nlohmann::json metrics_ = nlohmann::json::object();
};

void TrainRun::build_sources() {
  SourceOptions& so = source_options_;
  so.batch_size = a_.batch_size;
  so.image_size = static_cast<int>(a_.image_size);
  so.workers = static_cast<int>(a_.workers);
  so.seed = static_cast<uint64_t>(a_.seed);
  so.min_crop_scale = a_.min_crop_scale;
  so.gpu_decode = a_.decode == "gpu";
  so.classes = a_.num_classes > 0 ? a_.num_classes : 1000;
  if (job_) {
    so.rank = job_->config.rank;
    so.world = job_->config.world_size;
  }
  if (a_.synthetic) {
    train_ = synthetic_source(so);
  } else if (!a_.input_tensors.empty()) {
    // Read by read_tensors(); a source once checked against the model.
  } else {
    DataFolders f = find_data_folders(a_.data);
    train_ = folder_source(f.train, so);
    if (!f.val.empty()) {
      SourceOptions vo = so;
      vo.train = false;
      val_ = folder_source(f.val, vo);
    }
  }
  classes_ = a_.num_classes > 0 ? a_.num_classes : train_ ? train_->num_classes() : 0;
  if (classes_ == 0) classes_ = 1000;
}

void TrainRun::build_sessions() {
  model_ = load_model(a_, classes_, logs());
  const graph::Value* logits = model_.forward.outputs.at(0);
  const graph::Value* in = model_.forward.inputs.at(0);
  image_shape_ = {a_.batch_size, 3, a_.image_size, a_.image_size};
  if (input_tensors_) {
    // The images must be what the model takes; the model, not --image-size, sets their size.
    check_input_tensors(*input_tensors_, *in, a_.batch_size, logits->shape.size() == 2 ? logits->shape[1] : 0);
    image_shape_ = input_tensors_->images.shape;
    train_ = tensor_source(std::move(*input_tensors_), source_options_);
    input_tensors_.reset();
  } else if (in->shape[2] != a_.image_size || in->shape[3] != a_.image_size) {
    throw Error("model input '" + escape_name(in->name) + "' is " + in->shape_string() + " but images are " +
                std::to_string(a_.image_size) + "x" + std::to_string(a_.image_size) +
                "; set --image-size " + std::to_string(in->shape[2]));
  }
  if (logits->shape.size() == 2 && train_->num_classes() > 0 && logits->shape[1] != train_->num_classes())
    throw Error("the model has " + std::to_string(logits->shape[1]) + " classes but the dataset has " +
                std::to_string(train_->num_classes()) + "; give a model with " +
                std::to_string(train_->num_classes()) + " outputs (e.g. oxtrain zoo --num-classes)");
  if (!a_.model.empty() && a_.num_classes_given && logits->shape.size() == 2 && logits->shape[1] != a_.num_classes)
    throw Error("--num-classes " + std::to_string(a_.num_classes) + " but the model '" + a_.model + "' has " +
                std::to_string(logits->shape[1]) + " classes; leave --num-classes out (the model sets it)");
  input_name_ = in->name;
  runtime::SessionOptions so;
  so.threads = static_cast<int>(a_.threads);
  so.device = device();
  const PrecisionChoice precision = parse_precision(a_.precision);
  so.precision = precision.math;
  if (job_) {
    so.communicator = job_->comm.get();
    if (so.device == runtime::Device::cuda) so.device_index = job_->config.local_rank;  // a GPU per process
  }
  // As main.py, which turns cudnn.benchmark off for a seeded run: with --seed every cuDNN plan
  // is the heuristics' first that runs, not the fastest measured, so the run repeats bit for bit.
  so.measure_plans = !a_.seed_given;
  if (so.device == runtime::Device::cuda) {
    set_activity("compiling the step for the GPU");
    if (a_.seed_given && logs())
      std::fprintf(stderr, "oxtrain: warning: --seed: cuDNN plans are the heuristics' first choice rather than the "
                           "fastest measured, so the run repeats bit for bit; this can be slower\n");
  }
  if (!a_.evaluate) {
    graph::Graph copy = graph::copy_graph(model_.forward, {a_.batch_size, true});
    if (train_->gives_pixels()) input_name_ = graph::normalize_images_input(copy, imagenet_mean(), imagenet_std());
    autodiff::TrainingOptions to;
    to.momentum = a_.momentum;
    to.weight_decay = a_.weight_decay;
    to.allreduce = job_.has_value();
    to.bucket_bytes = static_cast<int64_t>(a_.bucket_mb * 1e6);
    to.random_seed = static_cast<uint64_t>(a_.seed);
    apply_precision(to, precision, a_.no_recompute, a_.conv_bn_fusion);
    to.channels_last = a_.channels_last;
    tg_ = autodiff::build_training_graph(std::move(copy), to);
    for (const auto& [v, d] : tg_.gradients) so.gradients.push_back(d);
    graph::Graph g = std::move(tg_.graph);
    session_ = std::make_unique<runtime::Session>(std::move(g), so);
    step_metrics_ = std::make_unique<runtime::StepMetrics>(*session_, tg_.loss, tg_.logits, tg_.labels);
  }
  if (val_ || a_.evaluate) {
    graph::Graph eval = graph::copy_graph(model_.forward, {a_.batch_size, true});
    graph::batchnorm_to_inference(eval);
    eval_input_ = val_ && val_->gives_pixels() ? graph::normalize_images_input(eval, imagenet_mean(), imagenet_std())
                                               : eval.inputs.at(0)->name;
    eval_output_ = eval.outputs.at(0)->name;
    so.gradients.clear();
    eval_session_ = std::make_unique<runtime::Session>(std::move(eval), so);
  }
}

// The persistent values a checkpoint must hold for this run, with their shapes: every value
// the training step updates (weights, momentum, BN statistics, the step count), or, when only
// evaluating, the evaluation graph's weights and statistics.
std::vector<const graph::Value*> persistent_values(const runtime::Session& s, bool training) {
  std::vector<const graph::Value*> out;
  if (training) {
    for (const auto& [state, next] : s.graph().updates) out.push_back(state);
  } else {
    for (const graph::Value* v : s.graph().initializers())
      if (v->role == graph::Role::Parameter || v->role == graph::Role::State) out.push_back(v);
  }
  return out;
}

// fp16's loss-scale states (autodiff::TrainingOptions::half): a checkpoint may lack them
// (written in another precision: the scale starts afresh) or hold them (resumed in another
// precision: they are not needed), so a run can change --precision when it resumes.
bool is_loss_scale_state(const std::string& name) { return name == "loss_scale" || name == "loss_scale/good_steps"; }

// Refuses a checkpoint that lacks any of the model's persistent values, holds one with another
// dtype or shape, or (when training) holds values the model does not have: resuming from it
// would silently train from fresh weights.
void check_checkpoint_values(const runtime::Checkpoint& ck, const std::string& path,
                             const runtime::Session& s, bool training) {
  const std::string shown = escape_name(path);
  std::vector<std::string> missing;
  auto required = persistent_values(s, training);
  for (const graph::Value* v : required) {
    const graph::Tensor* t = ck.find(v->name);
    if (!t) {
      if (is_loss_scale_state(v->name)) continue;
      missing.push_back(escape_name(v->name, 40));
      continue;
    }
    if (t->dtype != v->dtype || t->shape != v->shape)
      throw Error("checkpoint '" + shown + "' holds '" + escape_name(v->name) + "' as " +
                  graph::dtype_name(t->dtype) + " " + graph::shape_str(t->shape) + " but the model has " +
                  graph::dtype_name(v->dtype) + " " + v->shape_string() + "; it belongs to another model");
  }
  if (!missing.empty())
    throw Error("checkpoint '" + shown + "' lacks " + std::to_string(missing.size()) + " of " +
                std::to_string(required.size()) + " values: " + join_limited(missing, 120) +
                "; it is incomplete or belongs to another model");
  if (!training) return;  // momentum buffers are not needed to evaluate
  for (const auto& [name, tensor] : ck.tensors)
    if (!s.graph().find_value(name) && !is_loss_scale_state(name))
      throw Error("checkpoint '" + shown + "' holds '" + escape_name(name) + "', which this model lacks");
}

// A counter of the checkpoint's metadata (absent: 0), refused unless a whole number >= 0.
int64_t checkpoint_count(const runtime::Checkpoint& ck, const std::string& key, const std::string& path) {
  std::string text = ck.get(key, "0");
  auto v = parse_int64(text);
  if (!v || *v < 0)
    throw Error("checkpoint '" + escape_name(path) + "' has " + key + " '" + escape_name(text, 40) +
                "', not a whole number >= 0; the file is damaged, use an earlier checkpoint");
  return *v;
}

void TrainRun::restore(const std::string& path) {
  runtime::Checkpoint ck = runtime::load_checkpoint(path);
  std::string source = ck.get("model");
  if (source != model_.source)
    throw Error("checkpoint '" + escape_name(path) + "' was written for model '" + escape_name(source) +
                "', not '" + escape_name(model_.source) + "'");
  start_epoch_ = checkpoint_count(ck, "epoch", path);
  resume_batch_ = checkpoint_count(ck, "batch_in_epoch", path);
  global_step_ = checkpoint_count(ck, "step", path);
  std::string acc = ck.get("best_acc1", "0");
  auto best = parse_double(acc);
  if (!best || !(*best >= 0 && *best <= 100))
    throw Error("checkpoint '" + escape_name(path) + "' has best_acc1 '" + escape_name(acc, 40) +
                "', not a number in [0, 100]; the file is damaged, use an earlier checkpoint");
  best_acc1_ = *best;
  runtime::Session* target = session_ ? session_.get() : eval_session_.get();
  check_checkpoint_values(ck, path, *target, session_ != nullptr);
  for (const auto& [name, tensor] : ck.tensors)
    if (target->graph().find_value(name)) target->assign(name, tensor);
  if (logs())
    std::printf("=> loaded checkpoint '%s' (epoch %lld, batch %lld, step %lld)\n", path.c_str(),
              static_cast<long long>(start_epoch_), static_cast<long long>(resume_batch_),
              static_cast<long long>(global_step_));
  // The random ops draw from (seed, node, step): the run continues the original one exactly
  // only with its seed.
  std::string seed = ck.get("seed", "");
  if (logs() && !seed.empty() && seed != std::to_string(a_.seed))
    std::printf("=> note: the checkpoint was written with --seed %s, this run uses --seed %lld: Dropout masks "
                "and data order differ from the original run's\n",
                escape_name(seed, 40).c_str(), static_cast<long long>(a_.seed));
}

void TrainRun::save_checkpoint(int64_t epoch, int64_t batch_in_epoch, bool is_best) {
  std::string path = (fs::path(a_.checkpoint_dir) / "checkpoint.oxt").string();
  if (job_ && !job_->is_root()) {  // every rank holds the same weights: rank 0 writes them
    last_checkpoint_ = path;
    return;
  }
  runtime::Checkpoint ck;
  ck.meta = {{"model", model_.source},
             {"epoch", std::to_string(epoch)},
             {"batch_in_epoch", std::to_string(batch_in_epoch)},
             {"step", std::to_string(global_step_)},
             {"best_acc1", std::to_string(best_acc1_)},
             {"batch_size", std::to_string(a_.batch_size)},
             {"seed", std::to_string(a_.seed)}};
  for (const auto& [state, next] : session_->graph().updates)
    ck.tensors.emplace_back(state->name, session_->fetch(state->name));
  set_activity("writing the checkpoint");
  runtime::save_checkpoint(ck, path);
  last_checkpoint_ = path;
  if (is_best) copy_file_atomic(path, (fs::path(a_.checkpoint_dir) / "model_best.oxt").string());
  set_activity("training");
}

// Reads the step sums (a wait for the device) into main.py's meters: the value is the last
// step's, the average the epoch's so far. A loss that is not finite stops the run.
void TrainRun::read_step_metrics(AverageMeter& losses, AverageMeter& top1, AverageMeter& top5) {
  runtime::StepMetrics::Sums last = step_metrics_->last(), total = step_metrics_->total();
  double rows = static_cast<double>(std::max<int64_t>(1, last.rows));
  check_finite(last.loss);
  check_finite(total.loss);
  losses.set(last.loss / rows, total.loss, total.rows);
  top1.set(100.0 * last.top1 / rows, 100.0 * total.top1, total.rows);
  top5.set(100.0 * last.top5 / rows, 100.0 * total.top5, total.rows);
}

void TrainRun::make_decoder() {
  if (a_.decode != "gpu") return;
  if (decode_on_host()) {
    if (device() != runtime::Device::cpu)
      throw Error("OXTRAIN_DECODE_ON_HOST=1 (the GPU decoder's CPU twin) runs with --device cpu only");
    decoder_ = std::make_unique<HostJpegDecoder>();
    if (logs()) std::printf("=> decoding JPEGs with %s\n", decoder_->describe().c_str());
    return;
  }
  if (device() != runtime::Device::cuda)
    throw Error("--decode gpu needs a GPU, and this run trains on the CPU (no GPU is visible); use --decode cpu");
  decoder_ = runtime::make_gpu_jpeg_decoder(job_ ? job_->config.local_rank : 0);
  if (logs()) std::printf("=> decoding JPEGs on the GPU: %s\n", decoder_->describe().c_str());
}

void TrainRun::feed_encoded(runtime::Session& s, const std::string& input, const TrainBatch& b) {
  const graph::Shape& i = image_shape_;
  const int64_t n = i[0];
  const int size = static_cast<int>(i[2]);
  const size_t per_sample = static_cast<size_t>(size) * size * 3;
  if (!decoder_) throw Error("internal: a batch of JPEGs for the GPU, but no GPU decoder");
  encoded_images_.assign(static_cast<size_t>(n), runtime::EncodedImage{});
  for (int64_t k = 0; k < n; ++k) {
    runtime::EncodedImage& e = encoded_images_[static_cast<size_t>(k)];
    if (k >= b.size) {  // padding of a short last batch
      black_.resize(per_sample, 0);
      e.pixels = black_.data();
      continue;
    }
    const io::EncodedSample& from = b.encoded[k];
    if (from.bytes.empty()) {
      e.pixels = b.pixels + static_cast<size_t>(k) * per_sample;
      continue;
    }
    if (from.taps.cols.size() != static_cast<size_t>(size) || from.taps.rows.size() != static_cast<size_t>(size))
      throw Error("internal: a sample's taps are not of the image size " + std::to_string(size));
    e.data = from.bytes.data();
    e.size = from.bytes.size();
    e.width = from.width;
    e.height = from.height;
    e.cols = from.taps.cols.data();
    e.rows = from.taps.rows.data();
  }
  s.feed_written(input, graph::DType::u8, {i[0], i[2], i[3], i[1]}, [&](void* dst, void* stream) {
    decoder_->decode(encoded_images_.data(), static_cast<int>(n), size, static_cast<uint8_t*>(dst), stream,
                     [&](int k, uint8_t* out) {
                       // nvJPEG refused it: the CPU decodes it. A file the CPU cannot decode
                       // either becomes a black image under its own label (the CPU loader
                       // would take the next decodable file instead), named once.
                       const io::EncodedSample& from = b.encoded[k];
                       try {
                         io::decode_resample(from.bytes.data(), from.bytes.size(), *from.path, from.taps, out);
                       } catch (const std::exception& e) {
                         if (undecodable_.insert(*from.path).second)
                           std::fprintf(stderr, "oxtrain: warning: %s; a black image takes its place\n",
                                        one_line(e.what()).c_str());
                         std::fill(out, out + per_sample, uint8_t{0});
                       }
                     });
  });
}

// --device auto: the GPU where this build has CUDA and one is visible.
runtime::Device TrainRun::device() const {
  if (a_.device == "cpu") return runtime::Device::cpu;
  if (a_.device == "cuda") return runtime::Device::cuda;
  return runtime::cuda_devices().empty() ? runtime::Device::cpu : runtime::Device::cuda;
}

void TrainRun::check_finite(double loss) {
  if (std::isfinite(loss)) return;
  throw Error("the loss is " + std::string(std::isnan(loss) ? "NaN" : "infinite") + " at step " +
              std::to_string(global_step_) + "; stopping. " +
              (last_checkpoint_.empty() ? std::string("No checkpoint was written yet.")
                                        : "The last good checkpoint is '" + last_checkpoint_ + "'.") +
              " Lower --lr or check the data.");
}

bool TrainRun::train_epoch(int64_t epoch, int64_t first_batch) {
  const int64_t batches = train_->batches_per_epoch();
  AverageMeter batch_time("Time", ":6.3f"), data_time("Data", ":6.3f"), losses("Loss", ":.4e"),
      top1("Acc@1", ":6.2f"), top5("Acc@5", ":6.2f");
  ProgressMeter progress(batches, {&batch_time, &data_time, &losses, &top1, &top5}, epoch_prefix(epoch));
  float lr = static_cast<float>(learning_rate(a_, epoch));
  session_->feed(tg_.learning_rate, graph::Tensor::from_float({lr}, {}));
  step_metrics_->reset_total();
  train_->start_epoch(epoch, first_batch);
  auto end = std::chrono::steady_clock::now();
  TrainBatch b;
  for (int64_t i = first_batch; i < batches; ++i) {
    if (!train_->next(b)) break;
    auto loaded = std::chrono::steady_clock::now();
    data_time.update(std::chrono::duration<double>(loaded - end).count());
    feed_images(*session_, input_name_, b);
    session_->feed(tg_.labels, graph::DType::i64, {a_.batch_size}, b.labels);
    session_->feed(tg_.step, graph::Tensor::from_int64({global_step_}, {}));
    session_->run();
    ++global_step_;
    // Loss and hits add up on the device; they are read (a wait for the device) only when a
    // line is printed.
    step_metrics_->accumulate(b.size);
    bool print = i % a_.print_freq == 0;
    if (print) read_step_metrics(losses, top1, top5);
    // Steps are queued ahead of the device; the last one is timed to its end, so the summary's
    // img/s counts only finished work.
    bool last = i + 1 == batches || (a_.steps > 0 && global_step_ >= a_.steps) || g_interrupted;
    if (last && !print) session_->device().synchronize();
    auto now = std::chrono::steady_clock::now();
    double step_seconds = std::chrono::duration<double>(now - end).count();
    batch_time.update(step_seconds);
    end = now;
    step_seconds_.push_back(step_seconds);
    if (print && logs()) std::printf("%s\n", progress.line(i).c_str()), std::fflush(stdout);
    if (g_interrupted) {
      save_checkpoint(epoch, i + 1, false);
      if (logs())
        std::printf("interrupted: saved '%s' at epoch %lld, batch %lld; resume with --resume %s\n",
                  last_checkpoint_.c_str(), static_cast<long long>(epoch), static_cast<long long>(i + 1),
                  last_checkpoint_.c_str());
      return false;
    }
    if (a_.steps > 0 && global_step_ >= a_.steps) {
      save_checkpoint(epoch, i + 1, false);
      return false;
    }
  }
  read_step_metrics(losses, top1, top5);
  metrics_["epochs"].push_back({{"epoch", epoch}, {"loss", losses.avg()}, {"acc1", top1.avg()},
                                {"acc5", top5.avg()}, {"lr", lr}});
  return true;
}

double TrainRun::validate() {
  set_activity("validating");
  if (session_) copy_weights(*session_, *eval_session_);
  const int64_t batches = val_->batches_per_epoch();
  AverageMeter batch_time("Time", ":6.3f"), losses("Loss", ":.4e"), top1("Acc@1", ":6.2f"),
      top5("Acc@5", ":6.2f");
  ProgressMeter progress(batches, {&batch_time, &losses, &top1, &top5}, "Test: ");
  val_->start_epoch(0, 0);
  auto end = std::chrono::steady_clock::now();
  TrainBatch b;
  for (int64_t i = 0; val_->next(b); ++i) {
    feed_images(*eval_session_, eval_input_, b);
    eval_session_->run();
    graph::Tensor logits = eval_session_->fetch(eval_output_);
    int64_t classes = logits.shape[1];
    // Cross-entropy of the real rows (padding rows of a short last batch are ignored).
    double loss = 0;
    for (int64_t r = 0; r < b.size; ++r) {
      const float* row = logits.data<float>() + r * classes;
      double mx = *std::max_element(row, row + classes), sum = 0;
      for (int64_t c = 0; c < classes; ++c) sum += std::exp(row[c] - mx);
      loss += mx + std::log(sum) - row[b.labels[r]];
    }
    auto acc = accuracy_topk(logits.data<float>(), b.labels, b.size, classes, {1, 5});
    losses.update(loss / static_cast<double>(b.size), b.size);
    top1.update(acc[0], b.size);
    top5.update(acc[1], b.size);
    auto now = std::chrono::steady_clock::now();
    batch_time.update(std::chrono::duration<double>(now - end).count());
    end = now;
    if (i % a_.print_freq == 0 && logs()) std::printf("%s\n", progress.line(i).c_str());
  }
  if (job_) {
    // Each rank validated its share of DATA/val: the job's figures are the sums over ranks.
    std::vector<double> sums{top1.sum(), top5.sum(), losses.sum(), static_cast<double>(top1.count())};
    allreduce_host(*job_, sums);
    auto count = static_cast<int64_t>(std::llround(sums[3]));
    top1.set(top1.val(), sums[0], count);
    top5.set(top5.val(), sums[1], count);
    losses.set(losses.val(), sums[2], count);
  }
  if (logs()) std::printf("%s\n", test_summary(top1.avg(), top5.avg()).c_str());
  std::fflush(stdout);
  set_activity("training");
  metrics_["val"].push_back({{"acc1", top1.avg()}, {"acc5", top5.avg()}, {"loss", losses.avg()}});
  return top1.avg();
}

void TrainRun::save_model() {
  if (job_ && !job_->is_root()) return;
  runtime::Session& s = session_ ? *session_ : *eval_session_;
  for (graph::Value* v : model_.forward.initializers()) {
    if (v->role == graph::Role::Constant || !s.graph().find_value(v->name)) continue;
    v->data = std::make_shared<graph::Tensor>(s.fetch(v->name));
  }
  set_activity("saving the model");
  graph::export_onnx(model_.forward, a_.save_model);
  std::printf("=> saved the trained model to '%s'\n", a_.save_model.c_str());
}

void TrainRun::join() {
  runtime::dist::DistFlags f;
  if (!a_.dist_url.empty()) f.dist_url = a_.dist_url;
  if (a_.world_size_given) f.world_size = a_.world_size;
  if (a_.rank_given) f.rank = a_.rank;
  f.multiprocessing_distributed = a_.multiprocessing_distributed;
  if (auto w = spawned_worker()) {
    f.local_worker = w->first;
    f.workers_per_node = w->second;
  }
  std::optional<runtime::dist::DistConfig> config = runtime::dist::dist_config(f, runtime::dist::current_environment());
  if (!config) return;
  if (a_.multiprocessing_distributed) {
    // As main.py: -b is the node's batch, shared by its workers.
    int workers = config->local_world_size;
    if (input_tensors_ && !a_.batch_size_given) args_.batch_size *= workers;  // the tensors hold one worker's
    if (input_tensors_ && a_.batch_size_given && !input_tensors_->images.shape.empty() &&
        a_.batch_size != input_tensors_->images.shape[0] * workers)
      throw Error("--input-tensors: the images hold a batch of " + std::to_string(input_tensors_->images.shape[0]) +
                  " per worker but -b " + std::to_string(a_.batch_size) + " over " + std::to_string(workers) +
                  " workers gives each " + (a_.batch_size % workers ? std::string("a share that is not whole") :
                  std::to_string(a_.batch_size / workers)) + "; leave -b out (the tensors set the batch)");
    if (a_.batch_size % workers != 0)
      throw Error("-b " + std::to_string(a_.batch_size) + " is the node's batch and must divide among its " +
                  std::to_string(workers) + " workers");
    args_.batch_size /= workers;
  }
  set_activity("joining the data-parallel job");
  JoinOptions jo;
  jo.backend = a_.dist_backend;
  jo.timeout = std::chrono::milliseconds(static_cast<int64_t>(a_.dist_timeout_minutes * 60'000));
  if (jo.backend == "gloo" && device() == runtime::Device::cuda)
    throw Error("--dist-backend gloo reduces CPU buffers: use it with --device cpu (GPUs take nccl)");
  if (jo.backend == "nccl" && device() == runtime::Device::cpu)
    throw Error("--dist-backend nccl reduces GPU buffers: use --dist-backend gloo with --device cpu");
  job_ = join_job(*config, jo);
  if (logs()) std::printf("=> %s\n", runtime::dist::describe(*config).c_str());
}

// With --input-tensors the tensors set the batch (per rank) and the image size: a flag that
// says otherwise is the error, not its absence.
void TrainRun::read_tensors() {
  if (a_.input_tensors.empty()) return;
  input_tensors_ = read_input_tensors(a_.input_tensors);
  const graph::Shape& images = input_tensors_->images.shape;
  if (images.empty()) return;  // checked against the model later, with the whole shape
  const int64_t batch = images[0];
  if (a_.batch_size_given && a_.batch_size != batch && !a_.multiprocessing_distributed)
    throw Error("--input-tensors: the images hold a batch of " + std::to_string(batch) + " but -b is " +
                std::to_string(a_.batch_size) + "; leave -b out (the tensors set the batch)");
  if (!a_.batch_size_given) {
    check_range("the batch of --input-tensors", batch, 1, kMaxBatchSize);
    args_.batch_size = batch;
  }
  if (images.size() == 4) {
    if (a_.image_size_given && (a_.image_size != images[2] || a_.image_size != images[3]))
      throw Error("--input-tensors: the images are " + std::to_string(images[2]) + "x" +
                  std::to_string(images[3]) + " but --image-size is " + std::to_string(a_.image_size) +
                  "; leave --image-size out (the tensors set it)");
    args_.image_size = images[2];
  }
}

int TrainRun::run() {
  set_activity("checking the flags");
  check_args(a_);
  read_tensors();
  join();
  prepare_outputs(a_);
  set_activity("loading the data");
  build_sources();
  make_decoder();
  set_activity("building the model");
  build_sessions();
  start_epoch_ = a_.start_epoch;
  if (!a_.resume.empty()) {
    set_activity("resuming from the checkpoint");
    restore(a_.resume);
  }
  if (job_) {
    set_activity("agreeing on the job with every rank");
    runtime::Session& s = session_ ? *session_ : *eval_session_;
    int64_t parameters = 0;
    for (const graph::Value* v : s.graph().initializers())
      if (v->role == graph::Role::Parameter) parameters += v->numel();
    check_same_job(*job_, {{"model", fs::path(model_.source).filename().string()},
                           {"parameters", std::to_string(parameters)},
                           {"batch per rank", std::to_string(a_.batch_size)},
                           {"world size", std::to_string(job_->config.world_size)},
                           {"mode", a_.evaluate ? "evaluate" : "train"}});
    // Every rank starts from rank 0's weights and state (as PyTorch DDP's first broadcast).
    broadcast_persistent(*job_, s);
  }
  set_activity("training");
  if (a_.evaluate) {
    if (!val_) throw Error("--evaluate needs a validation folder DATA/val");
    validate();
    return 0;
  }
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, nullptr);
  bool stopped = false;
  for (int64_t epoch = start_epoch_; epoch < a_.epochs && !stopped; ++epoch) {
    int64_t first = epoch == start_epoch_ ? resume_batch_ : 0;
    stopped = !train_epoch(epoch, first);
    if (stopped) break;
    double acc1 = val_ ? validate() : 0;
    bool best = acc1 > best_acc1_;
    best_acc1_ = std::max(best_acc1_, acc1);
    save_checkpoint(epoch + 1, 0, best);
  }
  if (!a_.save_model.empty()) save_model();
  RunSummary summary;
  bool gpu = device() == runtime::Device::cuda;
  summary.device = gpu ? "GPU" : "CPU";
  summary.global_batch = a_.batch_size;
  if (job_) {
    summary.devices_per_node = job_->config.local_world_size;
    summary.nodes = std::max(1, job_->config.world_size / std::max(1, job_->config.local_world_size));
    summary.global_batch = a_.batch_size * job_->config.world_size;
  }
  summary.step_seconds = step_seconds_;
  // On a GPU: the most device memory the runtime held (arenas, staging, metrics); on the CPU,
  // the process's peak resident memory.
  int64_t peak = gpu ? peak_device_bytes() : peak_rss_bytes();
  summary.peak_memory_bytes = static_cast<double>(peak);
  if (logs()) std::printf("%s\n", throughput_summary(summary).c_str());
  // The same figures for --metrics-json: steps after the warm-up ones.
  size_t skip = step_seconds_.size() > static_cast<size_t>(summary.warmup_steps)
                    ? static_cast<size_t>(summary.warmup_steps) : 0;
  double timed = 0;
  for (size_t i = skip; i < step_seconds_.size(); ++i) timed += step_seconds_[i];
  size_t timed_steps = step_seconds_.size() - skip;
  double img_s = timed > 0 ? static_cast<double>(timed_steps * a_.batch_size) / timed : 0;
  double mean_step = timed_steps > 0 ? timed / static_cast<double>(timed_steps) : 0;
  if (train_->bad_files() > 0)
    std::printf("oxtrain: %lld unreadable images were skipped\n", static_cast<long long>(train_->bad_files()));
  if (decoder_ && logs())
    std::printf("oxtrain: nvJPEG decoded %lld images; %lld it refused were decoded on the CPU\n",
                static_cast<long long>(decoder_->decoded_on_device()),
                static_cast<long long>(decoder_->decoded_on_host()));
  // fp16's loss scale as the run leaves it (it halves on every overflow, a skipped step).
  double loss_scale = 0;
  if (session_ && !tg_.loss_scale.empty()) {
    loss_scale = session_->fetch(tg_.loss_scale).data<float>()[0];
    if (logs()) std::printf("oxtrain: fp16 loss scale %g\n", loss_scale);
  }
  if (!a_.metrics_json.empty() && (!job_ || job_->is_root())) {
    metrics_["steps"] = global_step_;
    metrics_["images_per_second"] = img_s;
    metrics_["mean_step_seconds"] = mean_step;
    metrics_["best_acc1"] = best_acc1_;
    metrics_["precision"] = a_.precision;
    if (loss_scale > 0) metrics_["loss_scale"] = loss_scale;
    metrics_["peak_memory_bytes"] = peak;
    metrics_["device"] = gpu ? session_ ? session_->device().description() : eval_session_->device().description()
                             : "cpu";
    set_activity("writing the metrics");
    write_file_atomic(a_.metrics_json, metrics_.dump(2) + "\n");
  }
  return g_interrupted ? 130 : 0;
}

}  // namespace

Subcommand add_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a model (flags of PyTorch's imagenet/main.py)");
  // A flag given twice takes the last value, as argparse does (scripts append overrides).
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("data", a->data, "ImageNet-layout folder: DATA/train/<class>/*, DATA/val/<class>/*");
  cmd->add_option("--model", a->model, "ONNX model to train");
  cmd->add_option("-a,--arch", a->arch, "model of the zoo when no --model is given")->capture_default_str();
  cmd->add_option("--epochs", a->epochs, "number of epochs")->capture_default_str();
  cmd->add_option("--start-epoch", a->start_epoch, "epoch number to start at")->capture_default_str();
  cmd->add_option("-b,--batch-size", a->batch_size, "batch size")->capture_default_str();
  cmd->add_option("--lr,--learning-rate", a->lr, "initial learning rate")->capture_default_str();
  cmd->add_option("--momentum", a->momentum, "momentum")->capture_default_str();
  cmd->add_option("--wd,--weight-decay", a->weight_decay, "weight decay")->capture_default_str();
  cmd->add_option("-p,--print-freq", a->print_freq, "print every N steps")->capture_default_str();
  cmd->add_option("-j,--workers", a->workers, "data loading threads (0: in the training thread)")->capture_default_str();
  cmd->add_option("--resume", a->resume, "checkpoint to resume from");
  cmd->add_flag("-e,--evaluate", a->evaluate, "evaluate on DATA/val only");
  cmd->add_option("--seed", a->seed, "seed of initialisation, shuffling, augmentation and the random ops (Dropout masks, stochastic depth); given, "
                  "as main.py's, it also makes GPU runs repeat bit for bit (cuDNN plans not chosen by timing)")->capture_default_str();
  cmd->add_flag("--synthetic", a->synthetic, "train on one random batch made once (no data loading)");
  cmd->add_option("--device", a->device, "cpu, cuda, or auto: cuda where a GPU is visible")->capture_default_str();
  cmd->add_option("--decode", a->decode,
                  "where JPEGs are decoded: cpu (the loader's -j threads) or gpu (nvJPEG, the GPU's JPEG engines where "
                  "it has them; the loader's threads read the files and decode on the CPU only what nvJPEG's "
                  "hardware decoder does not take, e.g. progressive JPEGs)")->capture_default_str();
  cmd->add_option("--precision", a->precision, kPrecisionHelp)->capture_default_str();
  cmd->add_flag("--no-recompute", a->no_recompute, kNoRecomputeHelp);
  cmd->add_option("--conv-bn-fusion", a->conv_bn_fusion, kConvBnFusionHelp)->capture_default_str();
  cmd->add_flag("--channels-last", a->channels_last, kChannelsLastHelp);
  cmd->add_option("--input-tensors", a->input_tensors, "IMAGES.pb,LABELS.pb: a fixed batch (ONNX TensorProto files)");
  cmd->add_option("--steps", a->steps, "stop after this many steps in total");
  cmd->add_option("--save-model", a->save_model, "write the trained model (weights, BN statistics) as ONNX");
  cmd->add_option("--metrics-json", a->metrics_json, "write per-epoch metrics and throughput as JSON");
  cmd->add_option("--checkpoint-dir", a->checkpoint_dir, "where checkpoint.oxt and model_best.oxt go")->capture_default_str();
  cmd->add_option("--image-size", a->image_size, "training crop size")->capture_default_str();
  cmd->add_option("--min-crop-scale", a->min_crop_scale,
                  "smallest area fraction of RandomResizedCrop (ImageNet: 0.08)")->capture_default_str();
  cmd->add_option("--num-classes", a->num_classes, "classes of a zoo model (default: the dataset's)");
  cmd->add_option("--lr-schedule", a->lr_schedule, "step (10x every 30 epochs) or cosine")->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (default: all cores)");
  cmd->add_option("--world-size", a->world_size, "number of nodes (distributed training)")->capture_default_str();
  cmd->add_option("--rank", a->rank, "node rank")->capture_default_str();
  cmd->add_option("--dist-url", a->dist_url, "rendezvous URL, e.g. tcp://host:23456");
  cmd->add_option("--dist-backend", a->dist_backend, "nccl or gloo")->capture_default_str();
  cmd->add_flag("--multiprocessing-distributed", a->multiprocessing_distributed,
                "one process per GPU of this node (per --nproc-per-node on the CPU)");
  cmd->add_option("--nproc-per-node", a->nproc_per_node,
                  "with --multiprocessing-distributed: workers on this node (default: the GPUs visible, on the CPU 1)");
  cmd->add_option("--bucket-mb", a->bucket_mb, "data parallel: gradient bucket size in MB")->capture_default_str();
  cmd->add_option("--dist-timeout", a->dist_timeout_minutes,
                  "data parallel: minutes to wait for the other ranks")->capture_default_str();
  cmd->add_flag("--log-all-ranks", a->log_all_ranks, "data parallel: every rank prints its log lines, not only rank 0");
  cmd->add_flag("--allow-external-data-anywhere", a->allow_external_data_anywhere,
                "let the model's external data files lie outside its folder");
  cmd->add_flag("--as-exported", a->as_exported,
                "train the file as written: do not put back batch norms or biases its exporter folded away");
  return {cmd, [a, cmd]() {
    a->num_classes_given = cmd->count("--num-classes") > 0;
    a->batch_size_given = cmd->count("--batch-size") > 0;
    a->image_size_given = cmd->count("--image-size") > 0;
    a->world_size_given = cmd->count("--world-size") > 0;
    a->rank_given = cmd->count("--rank") > 0;
    a->seed_given = cmd->count("--seed") > 0;
    if (a->multiprocessing_distributed) {
      int workers = a->nproc_per_node;
      if (workers == 0) {
        bool cpu = a->device == "cpu" || (a->device == "auto" && runtime::cuda_devices().empty());
        workers = cpu ? 1 : static_cast<int>(runtime::cuda_devices().size());
      }
      if (std::optional<int> code = run_local_workers(workers)) return *code;
    }
    TrainRun run(*a);
    return run.run();
  }};
}

}  // namespace oxtrain::cli
