"""Online alignment: GRPO, RLOO, ReMax, REINFORCE++ and online DPO against a reward."""
