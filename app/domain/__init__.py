"""The service's pure middle: a lead's record and its fence, a micro-batch's fold and scoring, segment rules,
when time alone is due to move a lead. Values in, values out; no Redis, no Kafka, no clock of its own."""
