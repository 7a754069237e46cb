module notifications/bench/loadgen

go 1.19
