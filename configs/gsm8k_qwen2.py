"""GSM8K self-training from a local Hugging Face checkpoint (e.g. Qwen2.5).

    python -m restmcts_jax.main \
        --config configs/gsm8k_qwen2.py:/path/to/Qwen2.5-0.5B-Instruct \
        --config.data.train=train.jsonl --config.data.test=test.jsonl \
        --workdir runs/gsm8k

The folder after `:` holds the model (`config.json`, safetensors weights) and
its tokenizer, which replaces the SentencePiece one (no `tokenizer.model` is
written). The data files are GSM8K JSONL (`question`, `answer` ending with
`#### <number>`). Solutions are one step per line, ending with the step
`The answer is: <number>`; the prompt is the bare question line (no chat
template).

Sized for one 80 GB GPU and a 0.5B model (1.5B: see below). The search
collects training trees as the reference's GSM8K data generation did (SPEC: 40
iterations, m = 1, c = 0.5, inf = 0.9, end gate 0.8 without stopping there,
b = 3). `warmstart.steps` is 0: an instruct model needs no format warm start.
If greedy accuracy at iteration 0 is near zero because the model does not end
with `The answer is: <number>`, set e.g. `--config.warmstart.steps=100` to
fine-tune on the training references' steps first.

Memory per device, estimated by `bench/memory.py` (XLA:CPU's buffer sizes of
the loop's jitted calls compiled at Qwen2.5's shapes, not measured on an
accelerator; BENCHMARKS.md has the commands). Parameters, KV caches and
activations are f32; the policy and the value model (a copy of it) are
1.8 GiB each at 0.5B, 5.8 GiB at 1.5B, 28 GiB at 7B. GiB per device:

                                           0.5B     1.5B     7B, fsdp=8
  collect: 32 questions, 40 MCTS* it        18       45       73
  train: batch 4 x 1,024 tokens (AdamW)     38       62       95 (batch 8)
  eval, 16 questions: SC at 4 samples       10       16       27
                      MCTS*, 64 it          14       36       56

The MCTS* row was estimated with the training search's settings (m = 1);
answering with the reference's evaluation search (`eval.search`: m = 3,
c = 0.7, inf = 1.0, end gate 0.9) is estimated at 14.7 instead of 14.4 GiB
at 0.5B.
The search's per-node KV caches dominate `collect` (1.5B: 26 GiB of its
45 at 32 questions x 121 nodes x 64-token steps, both models); they scale
with `search_batch` and `search.num_iterations`. Hence `train.batch_size` 4,
budgets up to 4 and `eval.batch_size` = 16 questions per call (the last call
padded), so a larger `eval.num_test` costs time, not memory. At 7B the
estimates exceed an 80 GB device: the models are f32, the caches stay whole
on every device of the block, and the training estimate is far above one
1,024-token row's activations (not analysed further: likely whole gathered
weights and gradients, which an accelerator's scheduler would gather layer by
layer). Plan on halving `search_batch`, train with `train.batch_size` = 8 (one
row per device), and measure.

Parameters are replicated by default: training is data-parallel over all
devices (the batch sizes must be multiples of the data-parallel size), and
search and evaluation run on one device per process, so every device holds
both models and, while training, AdamW in f32. Larger models shard them:
`--config.mesh.fsdp=F --config.mesh.tensor=T` splits every parameter and its
AdamW moments over blocks of F x T devices (embedding dimension over fsdp;
heads, MLP and vocabulary over tensor), the batch over data x fsdp, and each
process searches on its first block with the parameters left in place, e.g.
7B on one 8-GPU host: `--config.mesh.fsdp=8 --config.train.batch_size=8`
(11 GiB of f32 parameters and AdamW moments per device for the model being
trained; see the table above). A block may also span whole hosts (F x T a
multiple of a host's devices, e.g. fsdp 16 over two 8-GPU hosts): their
processes then search the same questions together, over the interconnect.
These layouts are tested on 8 simulated CPU devices and on two CPU processes
sharing one block (the same metrics as replicated / as one process); on
accelerators only the single-device layout has been run.

Measured on one H100 at 0.5B (random weights; BENCHMARKS.md): an AdamW step
at batch 4 x 256 tokens runs in 32 ms in f32 (26 ms with
`--config.model.compute_dtype=bfloat16`) but compiles in 20-30 s, and the
search and evaluation programs are larger, so a first run is compile-bound
(bf16, autotuning off): the warm start's 20 value steps took 76 s and
evaluating greedy and MCTS* on 16 questions 298 s, nearly all of it
compiling. `main`'s persistent compilation cache lets reruns, resumed runs
and later iterations load the programs (those two phases: 24 and 71 s), and
the coarse `train.length_buckets` below keep the training programs few. Keep
XLA's GPU autotuning on (its default): switched off, the step ran 7-8x
slower.
"""

from configs import game24

_USAGE = ("usage: --config configs/gsm8k_qwen2.py:/path/to/checkpoint "
          "--config.data.train=train.jsonl --config.data.test=test.jsonl "
          "(a local Hugging Face checkpoint folder with its tokenizer)")


def get_config(checkpoint: str = ""):
  """The config for the Hugging Face checkpoint folder `checkpoint`.

  Raises:
    ValueError: showing the usage, when no folder is given.
  """
  if not checkpoint:
    raise ValueError(f"configs/gsm8k_qwen2.py needs a checkpoint folder; "
                     f"{_USAGE}")
  config = game24.get_config()
  config.task = "gsm8k"
  config.question_width = 256
  config.max_depth = 10
  config.model.hf_checkpoint = checkpoint
  config.sampler.update(temperature=0.7, top_p=0.95, max_step_len=64)
  # V_0 learns from the reference solutions (a value rising along each).
  config.warmstart.update(steps=0, batch_size=4, learning_rate=1e-5,
                          value_steps=200)
  config.search.update(num_iterations=40, branch=3, roll_forward_steps=1,
                       exploration=0.5, unvisited_bonus=0.9, end_gate=0.8,
                       stop_at_end_gate=False, skip_exhausted=False,
                       max_expansions=1, widen_visits=0,
                       widen_after_final=False, token_budget=0)
  config.search_questions = 256
  config.search_batch = 32
  # Coarse length buckets: at 0.5B each one compiles an AdamW step in 20-30 s
  # on an H100, where a 4 x 256-token step runs in 32 ms.
  config.train.update(policy_steps=200, value_steps=200, batch_size=4,
                      learning_rate=1e-5, length_buckets="128,256,512,1024")
  config.eval.update(num_test=64, methods="greedy,sc,bon,tot,mcts", budget=4,
                     budgets="1,2,4", mcts_iterations=64, batch_size=16)
  # Answering with the reference's evaluation search (SPEC's defaults),
  # except what every evaluation search here does: only a finished solution
  # passes the gate or answers (`experiment.eval_context`), and the token
  # budget is spent in expectation (`stochastic_budget`, from game24.py), so
  # that MCTS* and the sampling methods spend alike.
  config.eval.search.update(branch=3, roll_branch=1, roll_forward_steps=3,
                            exploration=0.7, alpha=0.5, unvisited_bonus=1.0,
                            end_gate=0.9, skip_exhausted=False,
                            max_expansions=1, widen_visits=0,
                            stop_at_end_gate=True,
                            rollout_answers=False)
  return config
