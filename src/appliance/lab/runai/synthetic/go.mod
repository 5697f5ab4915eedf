module appliance.local/runai-synthetic

go 1.21
