// The translation unit that owns the trainer's precompiled <torch/torch.h>
// (trainer/CMakeLists.txt: every torch-side target reuses it).
