@echo off
rem uninstall.cmd: stop the ChatRelay service, wait until it has stopped, and
rem remove it.  Run as administrator.  The data folder
rem %ProgramData%\ChatRelay (history database, log) is kept.
rem CHATRELAY_SERVICE_NAME overrides the service name (default ChatRelay).
setlocal EnableExtensions
set "SVC=ChatRelay"
if defined CHATRELAY_SERVICE_NAME set "SVC=%CHATRELAY_SERVICE_NAME%"

sc query "%SVC%" >nul 2>&1
if errorlevel 1 (
    echo uninstall.cmd: service %SVC% is not installed
    goto :eventsource
)

rem Stop, then wait (at most ~30 s) for STOPPED: deleting a running service
rem only marks it for deletion.  The state is read with for /f rather than
rem find/findstr, whose exit codes Wine does not get right.
call :state
if /i not "%STATE%"=="STOPPED" sc stop "%SVC%" >nul 2>&1
set /a TRIES=0
:wait
call :state
if /i "%STATE%"=="STOPPED" goto :delete
set /a TRIES+=1
if %TRIES% geq 30 (
    echo uninstall.cmd: warning: %SVC% did not stop within 30 s; it is removed once it stops
    goto :delete
)
rem A one-second pause: ping exists everywhere (timeout.exe does not under Wine).
ping -n 2 127.0.0.1 >nul 2>&1
goto :wait

:delete
sc delete "%SVC%" >nul
if errorlevel 1 (
    echo uninstall.cmd: sc delete failed: run this from an elevated prompt ^(Run as administrator^)
    exit /b 1
)
echo uninstall.cmd: service %SVC% removed; data kept in %ProgramData%\ChatRelay

:eventsource
reg delete "HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\%SVC%" /f >nul 2>&1
exit /b 0

rem :state sets STATE to the word after "STATE : n" in the output of sc query.
:state
set "STATE="
for /f "tokens=1,3,4" %%a in ('sc query "%SVC%"') do if "%%a"=="STATE" set "STATE=%%c"
exit /b 0
