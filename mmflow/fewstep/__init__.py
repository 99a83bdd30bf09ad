"""Few-step and one-step generation on the shared core.

Each published route to one or two network calls is a training objective
(:class:`mmflow.training.TrainingObjective`) or a data pairing, trained by the one
:class:`mmflow.training.FlowMatching` module:

- ``couplings``: a teacher's (noise, sample, condition) pairs written to disk in shards, and
  the datamodule that trains on them (reflow, distillation, SlimFlow);
- ``straightness``: how far a model's trajectories are from straight lines;
- ``distillation``: regression to k steps on couplings;
- ``slimflow``: annealing reflow and flow-guided distillation of a smaller student;
- ``shortcut``: shortcut models (the step size as a network input, self-consistency);
- ``meanflow``: the average velocity trained with the MeanFlow identity.

Models that predict the average velocity over a step are sampled with ``step_euler``.
"""
