module urgepeers

go 1.19
