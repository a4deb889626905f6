"""SDA itself: class-conditional sampling, the DDA projection, the synthetic domain's plan, the
projection of shard sets, each method's predictions and the reports people read."""
