//! Chaos experiments for ZmqServices. `schedule` is the sans-IO scheduler: given a
//! ChaosSchedule, what it last ran, the guards and the time, it says what to run or skip.

pub mod schedule;
