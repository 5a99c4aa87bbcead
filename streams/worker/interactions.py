"""The interactions agent's step: a batch of raw interaction records into the users' histories.

A record that does not parse becomes a dead letter with the reason. An interaction with a product
that is not indexed is kept (it counts in the profile once the product is indexed) and counted
as ``interactions_unindexed``; it never fails the batch.
"""

from __future__ import annotations

from typing import Sequence

from streams.adapters.profiles import UserProfiles
from streams.adapters.store import ProductStore
from streams.schema.interactions import Interaction, InteractionError, parse_interaction
from streams.worker.pipeline import BatchOutcome, DeadLetter, Failure, IncomingMessage


def apply_interactions(messages: Sequence[IncomingMessage], profiles: UserProfiles, store: ProductStore) -> BatchOutcome:
    outcome = BatchOutcome()
    valid: list[Interaction] = []
    for message in messages:
        try:
            valid.append(parse_interaction(message.value))
        except InteractionError as exc:
            outcome.dead_letters.append(DeadLetter(message, Failure("invalid_interaction", str(exc))))
            outcome.counts["interactions_dead_lettered"] += 1
    if not valid:
        return outcome
    applied = profiles.record(valid)
    states = store.states(sorted({i.product_id for i in valid}))
    indexed = {pid for pid, state in states.items() if state.fingerprint is not None}  # not a delete tombstone
    outcome.counts["interactions_applied"] += applied
    outcome.counts["interactions_replayed"] += len(valid) - applied
    outcome.counts["interactions_unindexed"] += sum(1 for i in valid if i.product_id not in indexed)
    return outcome
