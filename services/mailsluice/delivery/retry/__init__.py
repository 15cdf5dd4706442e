"""The retry mover: holds records of the delay topics until due, then back to the pool's queue."""
