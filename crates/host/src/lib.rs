//! Host side: training runs (schedule, SMD coin, run folder, progress) against a board.
