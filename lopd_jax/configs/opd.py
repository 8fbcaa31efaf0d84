"""Config of `lopd opd`: Lightning OPD (offline, default) or standard online OPD.

Defaults are the paper's OPD settings (150 steps, lr 2e-6 constant, Adam(0.9, 0.98), weight
decay 0.1, advantage clip 10, 64 prompts x 4 samples at temperature 0.8 online) except the
batch, sized for a CPU run of a tiny model; the paper's configs set 256 sequences per step.
"""

from ml_collections import ConfigDict

from lopd_jax.configs import sections


def get_config() -> ConfigDict:
    c = ConfigDict()
    # Run directory: checkpoints/, metrics.jsonl, tb/, metrics.png. Re-running resumes.
    c.workdir = "runs/demo/opd"
    c.seed = 0
    # "lightning": train on the fixed, scored rollouts of `store`; no teacher is loaded.
    # "online": sample fresh rollouts from the current student every step and score them with
    # the live `teacher` (the baseline the paper beats 4x).
    c.mode = "lightning"
    # pi_ref: the SFT checkpoint (model.path) the student starts from; for "lightning" it must
    # be the checkpoint that sampled the store's rollouts.
    c.model = sections.model("runs/demo/sft/checkpoints")
    c.store = "runs/demo/rollouts.zarr"  # lightning: rollouts + teacher columns (`lopd score`)
    # online: the teacher (teacher.path, `--config.teacher=PATH` for short) and its numerics.
    c.teacher = sections.teacher()
    # lightning: the store's teacher column set to train on ("" = the default one; a name
    # written by `lopd score --config.columns=NAME`).
    c.teacher_columns = ""
    # Let an inconsistent (or unknown) SFT teacher through, for ablations; recorded.
    c.allow_inconsistent_teacher = False
    # Deviations from the paper's recipe, each refused unless set, and recorded in the manifest:
    # - continue_run: continue the run in `workdir` (finished or stopped) to a larger
    #   train.steps on the same inputs (manifest `extensions`);
    # - allow_other_start (lightning): start from model.path although it is not the checkpoint
    #   that sampled the store's rollouts, e.g. a later checkpoint of the SFT run or an OPD
    #   checkpoint trained on this store (manifest `other_start`). Lightning OPD has no
    #   importance weights because it starts at the sampler; from elsewhere w_t != 1 from the
    #   first update (see `lopd opd --help`).
    c.continue_run = False
    c.allow_other_start = False

    c.loss = ConfigDict()
    # "sampled_token" (the paper's: -A_t log pi_theta(a_t), A_t = log pi_T - log pi_theta) or
    # "topk_reverse_kl" (exact reverse KL over the teacher's stored top-k + a rest bucket;
    # needs `lopd score --config.topk>0`).
    c.loss.loss = "sampled_token"
    c.loss.adv_clip = 10.0  # |A_t| clip
    # "seq_mean_token_mean" (the reference code's), "token_mean" or "sum".
    c.loss.reduction = "seq_mean_token_mean"
    c.loss.center_advantage = False  # subtract each sequence's mean advantage (ablation)
    # > 0: weight the sampled-token loss by min(exp(log pi_theta - log pi_ref), cap): the
    # importance-weighted offline variant (ablation); 0 = the paper's w = 1.
    c.loss.importance_weight_cap = 0.0
    # > 0: PPO's clipped surrogate instead of -A_t s_t, ratio exp(log pi_theta - log pi_ref)
    # clipped to 1 +- ratio_clip (a token stops being pushed once it moved that far; no extra
    # stored column). Not with importance_weight_cap.
    c.loss.ratio_clip = 0.0
    c.loss.kl_ref_coef = 0.0  # > 0: add coef * KL(pi_theta || pi_ref) (k3, sampled token)

    c.data = ConfigDict()
    c.data.seq_len = 256  # tokens per packed row (prompt + response; longer rows are cut)
    c.data.packing = True
    c.data.num_packing_bins = 16
    # Lightning: use at most this many rollouts per prompt (0 = all the store has).
    c.data.rollouts_per_prompt = 0

    c.online = ConfigDict()
    c.online.prompts = ""  # prompts JSONL; "" = the generated addition task's prompts
    c.online.prompts_per_step = 8  # paper: 64
    c.online.samples_per_prompt = 4  # paper: 4
    c.online.temperature = 0.8
    c.online.top_p = 1.0
    c.online.max_new_tokens = 128  # paper: 4096
    c.online.topk = 16  # the live teacher's top-k, for loss=topk_reverse_kl
    # Updates on each freshly sampled and scored buffer: 1 = standard online OPD; N > 1 =
    # periodic rollout refresh every N steps, the bridge between online and Lightning OPD.
    c.online.reuse_steps = 1

    c.eval = sections.accuracy_eval()
    c.train = sections.train(steps=150, batch_size=16)
    c.train.eval_every = 50
    c.optimizer = sections.optimizer(
        learning_rate=2e-6, schedule="constant", warmup=0.0, b1=0.9, b2=0.98, weight_decay=0.1
    )
    c.checkpoint = sections.checkpoint(save_every=50)
    c.mesh = sections.mesh("fsdp")
    return c
