"""The fault-injection suite: every fault a user can cause, and the invariant it must keep."""
